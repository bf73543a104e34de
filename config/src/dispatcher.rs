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
    /// Drift checks queued or running at once per account. Keep it at most the account's
    /// plan workers: a pull request's plans are queued behind no more than this many drift
    /// checks, and start as soon as a worker is free.
    #[serde(default = "default_drift_jobs_per_account")]
    pub drift_jobs_per_account: u32,
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
    /// says so (the worker's own file is whole).
    #[serde(default = "default_max_log_bytes")]
    pub max_log_bytes: u64,
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
            drift_jobs_per_account: default_drift_jobs_per_account(),
            git_config: std::collections::BTreeMap::new(),
            web_address: None,
            public_url: None,
            log_retention_days: default_log_retention_days(),
            max_log_bytes: default_max_log_bytes(),
        }
    }
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
    if dispatcher.max_log_bytes < 1024 * 1024 {
        return Err(invalid(
            "dispatcher.max_log_bytes",
            format!(
                "{} is below the minimum of 1 MiB (1048576)",
                dispatcher.max_log_bytes
            ),
        ));
    }
    if dispatcher.max_units_per_run == 0 {
        return Err(invalid(
            "dispatcher.max_units_per_run",
            "must be at least 1",
        ));
    }
    crate::executor::check_git_config("dispatcher.git_config", &dispatcher.git_config)?;
    if dispatcher.lease_seconds < 10 {
        return Err(invalid(
            "dispatcher.lease_seconds",
            format!("{} is below the minimum of 10", dispatcher.lease_seconds),
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
}
