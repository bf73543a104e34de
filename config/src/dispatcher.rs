//! `[dispatcher]` and `[retry]`: settings only the dispatcher reads.

use std::path::PathBuf;

use serde::Deserialize;

use crate::{ConfigError, invalid};

/// Settings only the dispatcher reads.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispatcherSettings {
    /// Where the run database lives. Default: `$XDG_STATE_HOME/pipelines`, else
    /// `~/.local/state/pipelines`.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// The run database: `postgres://user@host:5432/database` for one that several
    /// dispatchers share (one leads, the others stand by), or `sqlite://PATH`. Default: SQLite
    /// in `state_dir`. Put the password in `store_password_file`, not here.
    #[serde(default)]
    pub store: Option<String>,
    /// A file holding the password of `store`'s user (a mounted secret), trailing newline
    /// ignored.
    #[serde(default)]
    pub store_password_file: Option<PathBuf>,
    /// PostgreSQL only: how long a leader's lease lasts unless renewed. A standby takes over
    /// this long after the leader stops renewing it.
    #[serde(default = "default_leader_lease_seconds")]
    pub leader_lease_seconds: u64,
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
    /// The broker users whose push and drift events start runs: the orchestrator of the
    /// deploy branch's workflow, in a CI environment that pull requests' jobs cannot use
    /// (`deploy/github-actions/pipelines.yml`). A push event asks to apply and destroy at
    /// commits of the deploy branch; from a pull request's CI it could ask to apply an older
    /// one again. These users may submit runs whatever `orchestrator_users` says. Empty: any
    /// user that may submit runs (the dispatcher warns at start-up when `orchestrator_users`
    /// is set and this is not).
    #[serde(default)]
    pub deploy_orchestrator_users: Vec<String>,
    /// The broker user an executor of each account and role sends job events as, with
    /// both `{account}` and `{role}` (`plan` or `apply`) in it: `pipelines-executor-{account}-{role}`
    /// for the users `pipelines broker definitions` makes. A claim, heartbeat, give-back,
    /// outcome or log chunk about a job from any other user is dead-lettered, naming both
    /// users, so that no executor login acts on another account's or role's jobs nor writes
    /// their logs. Default: not set, any user
    /// that may publish job events (the dispatcher warns at start-up).
    #[serde(default)]
    pub executor_users: Option<String>,
    /// The most units one change event may name. A bigger event is rejected with this limit
    /// named: its run would hold the dispatcher, the broker and the PR comment hostage.
    #[serde(default = "default_max_units_per_run")]
    pub max_units_per_run: usize,
    /// Finished runs, their jobs and outputs are deleted this many days after they ended
    /// (checked at start and hourly). 0 keeps everything.
    #[serde(default = "default_retention_days")]
    pub retention_days: u64,
    /// Drift checks queued or running at once per account. Keep it at most the account's
    /// plan workers: a pull request's plans are queued behind no more than this many drift
    /// checks, and start as soon as a worker is free.
    #[serde(default = "default_drift_jobs_per_account")]
    pub drift_jobs_per_account: u32,
    /// Of each account's `max_concurrent_jobs`, how many slots only the deploy branch's jobs
    /// (on apply workers) may take: pull requests' plans and drift checks share the rest, so
    /// that a pull request's slow plans cannot hold up a merge's applies. At most the cap less
    /// one is kept, so plans always have a slot; 0 lets plans take every slot.
    #[serde(default = "default_reserved_apply_slots")]
    pub reserved_apply_slots: u32,
    /// git settings for the dispatcher's own mirrors (`[[drift]]` schedules and drift pull
    /// requests), given to git through its environment: a credential helper that may push the
    /// drift branch, for example. Never put a write token in `repositories.url`: executors,
    /// plan workers included, read that.
    #[serde(default)]
    pub git_config: std::collections::BTreeMap<String, String>,
    /// Where to serve the web page of runs, jobs and live logs (`host:port`). Default: not
    /// served. Bind to a loopback address (127.0.0.1) unless a reverse proxy in front of it
    /// authenticates users (see `[web]`).
    #[serde(default)]
    pub web_address: Option<String>,
    /// The address users reach the web page at (`https://pipelines.example.com`): pull
    /// request comments link to their run's page. Default: no link.
    #[serde(default)]
    pub public_url: Option<String>,
    /// Job logs (streamed by the workers, kept under `state_dir/logs`) are deleted this many
    /// days after they were last written (checked at start and hourly). 0 keeps them.
    #[serde(default = "default_log_retention_days")]
    pub log_retention_days: u64,
    /// The most bytes of one job's log the dispatcher keeps; the rest is dropped and the log
    /// says so (the worker's own file keeps up to `executor.max_log_bytes`, the same 128 MiB by
    /// default).
    #[serde(default = "default_max_log_bytes")]
    pub max_log_bytes: u64,
    /// The most bytes all logs of one run may take in the dispatcher's store; past it the
    /// run's further logs are cut and say so. Bounds what one pull request, each of whose
    /// units may print `max_log_bytes`, can put on the dispatcher's disk. 0: no limit.
    #[serde(default = "crate::default_max_run_log_bytes")]
    pub max_run_log_bytes: u64,
    /// The most bytes all job logs may take. To write past it, the logs of the runs written
    /// longest ago are deleted first; what still does not fit is cut. 0 (the default): no
    /// limit but `log_keep_free_bytes`.
    #[serde(default)]
    pub max_total_log_bytes: u64,
    /// Logs are never written into the last this many bytes of the state directory's
    /// filesystem, so that the run database always has room: the logs of the runs written
    /// longest ago are deleted first, and what still does not fit is cut. 0: no reserve.
    #[serde(default = "crate::default_log_keep_free_bytes")]
    pub log_keep_free_bytes: u64,
    /// Pull request events must carry an OIDC token of their own pull request's CI job
    /// (`PIPELINES_ID_TOKEN`, a GitHub Actions `id-token`): one pull request's CI, which holds
    /// the orchestrator login every pull request shares, then cannot submit runs in another's
    /// name. Default: not checked (the number is the orchestrator's word).
    #[serde(default)]
    pub oidc: Option<crate::OidcSettings>,
}

impl Default for DispatcherSettings {
    fn default() -> DispatcherSettings {
        DispatcherSettings {
            state_dir: None,
            store: None,
            store_password_file: None,
            leader_lease_seconds: default_leader_lease_seconds(),
            lease_seconds: default_lease_seconds(),
            metrics_address: None,
            orchestrator_users: Vec::new(),
            deploy_orchestrator_users: Vec::new(),
            executor_users: None,
            max_units_per_run: default_max_units_per_run(),
            retention_days: default_retention_days(),
            drift_jobs_per_account: default_drift_jobs_per_account(),
            reserved_apply_slots: default_reserved_apply_slots(),
            git_config: std::collections::BTreeMap::new(),
            web_address: None,
            public_url: None,
            log_retention_days: default_log_retention_days(),
            max_log_bytes: default_max_log_bytes(),
            max_run_log_bytes: crate::default_max_run_log_bytes(),
            max_total_log_bytes: 0,
            log_keep_free_bytes: crate::default_log_keep_free_bytes(),
            oidc: None,
        }
    }
}

fn default_leader_lease_seconds() -> u64 {
    10
}

fn default_log_retention_days() -> u64 {
    30
}

fn default_max_log_bytes() -> u64 {
    128 * 1024 * 1024
}

fn default_max_units_per_run() -> usize {
    5_000
}

fn default_drift_jobs_per_account() -> u32 {
    2
}

fn default_reserved_apply_slots() -> u32 {
    1
}

fn default_retention_days() -> u64 {
    90
}

impl DispatcherSettings {
    /// `store` with the password from `store_password_file`; `None`: SQLite in `state_dir`.
    pub fn store_url(&self) -> Result<Option<String>, ConfigError> {
        let Some(url) = &self.store else {
            return Ok(None);
        };
        let Some(path) = &self.store_password_file else {
            return Ok(Some(url.clone()));
        };
        let password = crate::read_password_file("dispatcher.store_password_file", path)?;
        crate::urls::with_password(url, &password)
            .map(Some)
            .ok_or_else(|| {
                invalid(
                    "dispatcher.store",
                    format!("{url:?} names no user for the password in store_password_file"),
                )
            })
    }

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

/// The dispatcher's settings, naming the key of the first bad one.
pub(crate) fn validate(dispatcher: &DispatcherSettings) -> Result<(), ConfigError> {
    if let Some(address) = &dispatcher.metrics_address
        && address.parse::<std::net::SocketAddr>().is_err()
    {
        return Err(invalid(
            "dispatcher.metrics_address",
            format!("{address:?} is not a host:port address like 0.0.0.0:9464"),
        ));
    }
    if let Some(address) = &dispatcher.web_address
        && address.parse::<std::net::SocketAddr>().is_err()
    {
        return Err(invalid(
            "dispatcher.web_address",
            format!("{address:?} is not a host:port address like 127.0.0.1:8480"),
        ));
    }
    if let Some(url) = &dispatcher.public_url
        && !(url.starts_with("https://") || url.starts_with("http://"))
    {
        return Err(invalid(
            "dispatcher.public_url",
            format!("{url:?} is not an http:// or https:// address"),
        ));
    }
    crate::check_log_bytes("dispatcher.max_log_bytes", dispatcher.max_log_bytes)?;
    crate::check_log_budget("dispatcher.max_run_log_bytes", dispatcher.max_run_log_bytes)?;
    crate::check_log_budget(
        "dispatcher.max_total_log_bytes",
        dispatcher.max_total_log_bytes,
    )?;
    if let Some(template) = &dispatcher.executor_users {
        check_executor_users(template)?;
    }
    if dispatcher.max_units_per_run == 0 {
        return Err(invalid(
            "dispatcher.max_units_per_run",
            "must be at least 1",
        ));
    }
    crate::executor::check_git_config("dispatcher.git_config", &dispatcher.git_config)?;
    validate_store(dispatcher)?;
    if !(2..=3600).contains(&dispatcher.leader_lease_seconds) {
        return Err(invalid(
            "dispatcher.leader_lease_seconds",
            format!(
                "{} is outside 2 to 3600 seconds",
                dispatcher.leader_lease_seconds
            ),
        ));
    }
    if dispatcher.lease_seconds < 10 {
        return Err(invalid(
            "dispatcher.lease_seconds",
            format!("{} is below the minimum of 10", dispatcher.lease_seconds),
        ));
    }
    Ok(())
}

/// `executor_users` names one user per account and role: both placeholders are required (a
/// user shared by an account's plan and apply workers would let a plan worker's login act on
/// applies), and no other braces, so that a typo such as `{acount}` fails here rather than
/// refuse every job event.
fn check_executor_users(template: &str) -> Result<(), ConfigError> {
    let key = "dispatcher.executor_users";
    for (placeholder, shared) in [
        ("{account}", "every account's executors"),
        ("{role}", "an account's plan and apply workers"),
    ] {
        if !template.contains(placeholder) {
            return Err(invalid(
                key,
                format!("{template:?} has no {placeholder}: {shared} would share one user"),
            ));
        }
    }
    let rest = template.replace("{account}", "").replace("{role}", "");
    if rest.contains(['{', '}']) {
        return Err(invalid(
            key,
            format!("{template:?} has a placeholder other than {{account}} and {{role}}"),
        ));
    }
    Ok(())
}

impl DispatcherSettings {
    /// The broker user that may send job events about a job of `account` for `role`
    /// (`plan` or `apply`), when `executor_users` is set.
    pub fn executor_user(&self, account: &str, role: &str) -> Option<String> {
        let template = self.executor_users.as_ref()?;
        Some(
            template
                .replace("{account}", account)
                .replace("{role}", role),
        )
    }

    /// The user that should have sent a message about a job of `account` for `role`, when
    /// `executor_users` is set and `user` (the broker user RabbitMQ checked) is not it. Job
    /// events and log chunks both ask this, so that a login speaks for its own jobs only.
    pub fn executor_user_mismatch(
        &self,
        account: &str,
        role: &str,
        user: Option<&str>,
    ) -> Option<String> {
        self.executor_user(account, role)
            .filter(|expected| user != Some(expected.as_str()))
    }
}

/// `store`: a PostgreSQL URL without a password, or a SQLite path; a password file only for
/// PostgreSQL.
fn validate_store(dispatcher: &DispatcherSettings) -> Result<(), ConfigError> {
    let postgres = match &dispatcher.store {
        None => false,
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            if crate::urls::url_password(url).is_some() {
                return Err(invalid(
                    "dispatcher.store",
                    format!(
                        "{:?} has a password: put it in dispatcher.store_password_file",
                        crate::urls::redact_url(url)
                    ),
                ));
            }
            true
        }
        Some(url) => {
            if url.strip_prefix("sqlite://").is_none_or(str::is_empty) {
                return Err(invalid(
                    "dispatcher.store",
                    format!("{url:?} is neither postgres://user@host/database nor sqlite://PATH"),
                ));
            }
            false
        }
    };
    if let Some(path) = &dispatcher.store_password_file
        && !postgres
    {
        return Err(invalid(
            "dispatcher.store_password_file",
            format!(
                "{} is given, but dispatcher.store is not a postgres:// URL",
                path.display()
            ),
        ));
    }
    Ok(())
}

/// The retry policy: at least one attempt, patterns that compile.
pub(crate) fn validate_retry(retry: &RetryPolicy) -> Result<(), ConfigError> {
    if retry.max_attempts == 0 {
        return Err(invalid(
            "retry.max_attempts",
            "must be at least 1 (1 disables retries)",
        ));
    }
    for (i, pattern) in retry.patterns.iter().enumerate() {
        if let Err(err) = regex::Regex::new(pattern) {
            return Err(invalid(
                format!("retry.patterns[{i}]"),
                format!("invalid regular expression {pattern:?}: {err}"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executor_users_needs_the_account_and_the_role_and_knows_no_other_placeholder() {
        let with = |template: &str| DispatcherSettings {
            executor_users: Some(template.to_owned()),
            ..DispatcherSettings::default()
        };
        let err = |template: &str| validate(&with(template)).unwrap_err().to_string();
        assert!(
            err("pipelines-executor")
                .contains("`dispatcher.executor_users`: \"pipelines-executor\" has no {account}"),
            "{}",
            err("pipelines-executor")
        );
        assert!(
            err("pipelines-executor-{account}-{role}-{rol}")
                .contains("has a placeholder other than {account} and {role}")
        );
        let shipped = with("pipelines-executor-{account}-{role}");
        validate(&shipped).unwrap();
        assert_eq!(
            shipped.executor_user("prod", "apply").as_deref(),
            Some("pipelines-executor-prod-apply")
        );
        assert!(err("exec-{account}").contains(
            "\"exec-{account}\" has no {role}: an account's plan and apply workers would share one user"
        ));
        assert_eq!(
            DispatcherSettings::default().executor_user("dev", "plan"),
            None
        );
        let apply = "pipelines-executor-prod-apply";
        assert_eq!(
            shipped.executor_user_mismatch("prod", "apply", Some(apply)),
            None
        );
        for other in [Some("pipelines-executor-prod-plan"), None] {
            assert_eq!(
                shipped
                    .executor_user_mismatch("prod", "apply", other)
                    .as_deref(),
                Some(apply),
                "{other:?}"
            );
        }
        assert_eq!(
            DispatcherSettings::default().executor_user_mismatch("prod", "apply", None),
            None,
            "unset: any sender"
        );
    }

    #[test]
    fn dispatcher_and_retry_settings_name_their_key() {
        let err = |settings: DispatcherSettings| validate(&settings).unwrap_err().to_string();
        assert!(
            err(DispatcherSettings {
                lease_seconds: 5,
                ..DispatcherSettings::default()
            })
            .contains("`dispatcher.lease_seconds`: 5 is below the minimum of 10")
        );
        assert!(
            err(DispatcherSettings {
                max_units_per_run: 0,
                ..DispatcherSettings::default()
            })
            .contains("`dispatcher.max_units_per_run`: must be at least 1")
        );
        assert!(
            err(DispatcherSettings {
                metrics_address: Some("localhost".into()),
                ..DispatcherSettings::default()
            })
            .contains("`dispatcher.metrics_address`")
        );
        assert!(
            err(DispatcherSettings {
                web_address: Some("pipelines.internal".into()),
                ..DispatcherSettings::default()
            })
            .contains("`dispatcher.web_address`: \"pipelines.internal\" is not a host:port")
        );
        assert!(
            err(DispatcherSettings {
                public_url: Some("pipelines.example.com".into()),
                ..DispatcherSettings::default()
            })
            .contains("`dispatcher.public_url`")
        );
        assert!(
            err(DispatcherSettings {
                max_run_log_bytes: 4096,
                ..DispatcherSettings::default()
            })
            .contains("`dispatcher.max_run_log_bytes`: 4096 is below the minimum of 1 MiB")
        );
        assert!(
            err(DispatcherSettings {
                max_total_log_bytes: 1,
                ..DispatcherSettings::default()
            })
            .contains("`dispatcher.max_total_log_bytes`: 1 is below")
        );
        let defaults = DispatcherSettings::default();
        assert_eq!(
            (
                defaults.max_run_log_bytes,
                defaults.max_total_log_bytes,
                defaults.log_keep_free_bytes
            ),
            (2 << 30, 0, 2 << 30)
        );
        assert!(
            validate(&DispatcherSettings {
                max_run_log_bytes: 0,
                log_keep_free_bytes: 0,
                ..DispatcherSettings::default()
            })
            .is_ok(),
            "0: no limit"
        );
        assert!(validate(&DispatcherSettings::default()).is_ok());
        let bad_pattern = RetryPolicy {
            patterns: vec!["(unclosed".into()],
            ..RetryPolicy::default()
        };
        assert!(
            validate_retry(&bad_pattern)
                .unwrap_err()
                .to_string()
                .contains("`retry.patterns[0]`: invalid regular expression")
        );
    }

    #[test]
    fn the_store_is_a_postgres_url_with_its_password_in_a_file_or_a_sqlite_path() {
        let err = |store: &str, file: Option<&std::path::Path>| {
            validate(&DispatcherSettings {
                store: Some(store.into()),
                store_password_file: file.map(Into::into),
                ..DispatcherSettings::default()
            })
            .map_err(|err| err.to_string())
        };
        let inline = err("postgres://pipelines:s3cret@db/runs", None).unwrap_err();
        assert!(
            inline.contains("`dispatcher.store`")
                && inline.contains("store_password_file")
                && !inline.contains("s3cret"),
            "{inline}"
        );
        let unknown = err("mysql://db/runs", None).unwrap_err();
        assert!(
            unknown.contains("\"mysql://db/runs\" is neither"),
            "{unknown}"
        );
        let stray = err("sqlite:///var/lib/p", Some(std::path::Path::new("/x"))).unwrap_err();
        assert!(
            stray.contains("`dispatcher.store_password_file`"),
            "{stray}"
        );
        assert!(err("sqlite:///var/lib/p", None).is_ok());

        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("password");
        std::fs::write(&secret, "p@ss word\n").unwrap();
        let settings = DispatcherSettings {
            store: Some("postgres://pipelines@db:5432/runs".into()),
            store_password_file: Some(secret),
            ..DispatcherSettings::default()
        };
        assert!(validate(&settings).is_ok());
        assert_eq!(
            settings.store_url().unwrap().as_deref(),
            Some("postgres://pipelines:p%40ss%20word@db:5432/runs")
        );
        let short = DispatcherSettings {
            leader_lease_seconds: 1,
            ..DispatcherSettings::default()
        };
        assert!(
            validate(&short)
                .unwrap_err()
                .to_string()
                .contains("`dispatcher.leader_lease_seconds`: 1 is outside")
        );
    }
}
