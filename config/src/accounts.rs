//! `[[accounts]]`: which account owns which unit paths, with its caps and identities.

use std::collections::HashSet;

use globset::GlobMatcher;
use serde::Deserialize;

use crate::{Config, ConfigError, invalid, parse_duration};

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
    /// Applies and destroys of the account's units wait for an approver (`[approvals]`) before
    /// they start. Pull-request plans never wait; they say that the apply will.
    #[serde(default)]
    pub require_approval: bool,
}

impl Account {
    /// The job timeout in seconds (validated when the configuration was loaded).
    pub fn job_timeout_secs(&self) -> u64 {
        parse_duration(&self.job_timeout).map_or(4 * 3600, |d| d.as_secs())
    }
}

pub(crate) fn default_job_timeout() -> String {
    "4h".to_owned()
}

/// Compiles an account path glob with the documented semantics.
pub fn compile_glob(glob: &str) -> Result<globset::GlobMatcher, String> {
    globset::GlobBuilder::new(glob)
        .literal_separator(true)
        .build()
        .map(|glob| glob.compile_matcher())
        .map_err(|err| format!("invalid glob {glob:?}: {err}"))
}

fn is_account_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Routes unit paths to accounts: the first account, in config order, with a matching glob.
#[derive(Debug, Clone, Default)]
pub struct AccountRouter {
    accounts: Vec<(String, Vec<GlobMatcher>)>,
}

impl AccountRouter {
    /// Globs were validated when the config was loaded; one that still fails to compile
    /// matches nothing.
    pub fn new(config: &Config) -> AccountRouter {
        let accounts = config
            .accounts
            .iter()
            .map(|account| {
                let globs = account
                    .paths
                    .iter()
                    .filter_map(|g| compile_glob(g).ok())
                    .collect();
                (account.name.clone(), globs)
            })
            .collect();
        AccountRouter { accounts }
    }

    /// The account owning `unit`, if any.
    pub fn route(&self, unit: &str) -> Option<&str> {
        self.accounts
            .iter()
            .find(|(_, globs)| globs.iter().any(|glob| glob.is_match(unit)))
            .map(|(name, _)| name.as_str())
    }
}

/// A unit or file path from an event or a job must be relative, normalized and inside the
/// repository: `a/b`, never `/a`, `a/../b`, `./a`, `a//b` or `a\\b`. The dispatcher, the
/// executors and `[triggers]` share this one rule.
pub fn check_path(path: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("path {path:?} {why}"));
    if path.is_empty() {
        return bad("is empty");
    }
    if path.len() > 4096 {
        return bad("is longer than 4096 bytes");
    }
    if path.starts_with('/') {
        return bad("is absolute");
    }
    if path.contains('\\') || path.contains('\0') || path.chars().any(char::is_control) {
        return bad("contains a backslash or control character");
    }
    for segment in path.split('/') {
        match segment {
            "" => return bad("is not normalized (empty segment)"),
            "." | ".." => return bad("is not normalized (contains . or ..)"),
            _ => {}
        }
    }
    Ok(())
}

impl Config {
    /// At least one account; unique queue-safe names, valid globs and job timeouts, and
    /// identities that exist and keep plans apart from applies.
    pub(crate) fn validate_accounts(&self) -> Result<(), ConfigError> {
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
        Ok(())
    }

    /// Whether an account's applies run as the executor host's own identity (no
    /// `apply_credentials`, or a `none` provider): an instance profile, a node's workload
    /// identity. Then nothing in the configuration keeps a plan from it: a plan's code on a
    /// host with that identity reaches it through the instance metadata endpoint, whatever
    /// the plan's own credentials; only where plan workers run does.
    pub fn applies_as_the_host(&self, account: &Account) -> bool {
        self.credentials_for(account, true)
            .is_none_or(|apply| apply.provider == crate::CredentialsProvider::None)
    }

    /// Why an account's plan identity is not apart from its apply identity, if it is not: the
    /// same entry, the same token file or the same role. Plans run pull requests' code.
    pub(crate) fn roles_apart(&self, account: &Account) -> Result<(), String> {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{VALID, error_of};

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
    fn applies_without_credentials_of_their_own_run_as_the_host() {
        let config = |apply: &str| Config::from_toml(&format!("{VALID}\n{apply}")).unwrap();
        let as_host = |config: &Config| config.applies_as_the_host(&config.accounts[0]);
        assert!(as_host(&config("")));
        assert!(as_host(&config(
            "apply_credentials = \"a\"\n[[credentials]]\nname = \"a\"\nprovider = \"none\"\n"
        )));
        assert!(!as_host(&config(
            "apply_credentials = \"a\"\n[[credentials]]\nname = \"a\"\n\
             provider = \"aws-web-identity\"\nrole_arn = \"arn:aws:iam::1:role/apply\"\n\
             token_file = \"/var/run/apply/token\"\n"
        )));
        // Plans as the host, applies with their own: the host's identity is not the apply's.
        assert!(!as_host(&config(
            "plan_credentials = \"p\"\napply_credentials = \"a\"\n\
             [[credentials]]\nname = \"p\"\nprovider = \"none\"\n\
             [[credentials]]\nname = \"a\"\nprovider = \"command\"\ncommand = [\"creds\"]\n"
        )));
    }

    #[test]
    fn globs_do_not_cross_directories_unless_doubled() {
        assert!(compile_glob("prod/*").unwrap().is_match("prod/app"));
        assert!(!compile_glob("prod/*").unwrap().is_match("prod/eu/app"));
        assert!(compile_glob("prod/**").unwrap().is_match("prod/eu/app"));
    }
}
