//! `[[credentials]]`: named identities accounts use for plans and for applies.

use std::collections::HashSet;
use std::path::PathBuf;

use serde::Deserialize;

use crate::repositories::is_plain_name;
use crate::{Config, ConfigError, invalid};

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

impl Config {
    pub(crate) fn validate_credentials(&self) -> Result<(), ConfigError> {
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
}
