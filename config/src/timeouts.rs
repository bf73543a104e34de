//! `[timeouts]`: how long every outside call may take.

use serde::Deserialize;

use crate::{ConfigError, invalid, parse_duration};

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

/// Every deadline must parse, naming its key.
pub(crate) fn validate(timeouts: &Timeouts) -> Result<(), ConfigError> {
    for (key, value) in timeouts.fields() {
        if let Err(err) = parse_duration(value) {
            return Err(invalid(key, err));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::Config;
    use crate::testing::{VALID, error_of};

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
}
