//! `[[policies]]` and `[policy]`: which Rego policy sets the executors evaluate against which
//! plans, and the limits every evaluation runs under.
//!
//! Policies are configuration, like everything in this file: they live with the executors,
//! owned by admins, never in the infrastructure repository a pull request can change.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use globset::GlobMatcher;
use serde::Deserialize;

use crate::{ConfigError, compile_glob, invalid, parse_duration};

/// One policy set: a directory (or one file) of `.rego` files.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySet {
    /// How results name the set. Default: the last component of `path`.
    #[serde(default)]
    pub name: Option<String>,
    /// A directory whose `.rego` files (not `_test.rego`, recursively) form the set, or one
    /// `.rego` file. Read once when the worker starts, never again during a job.
    pub path: PathBuf,
    /// Globs over account names the set applies to. Default: every account.
    #[serde(default = "everything")]
    pub accounts: Vec<String>,
    /// Globs over repo-relative unit paths the set applies to. Default: every unit.
    #[serde(default = "every_unit")]
    pub units: Vec<String>,
    /// `deny`: a `deny` result fails the job. `warn`: it is reported as a warning only (for
    /// trying a new policy out before enforcing it).
    #[serde(default)]
    pub mode: PolicyMode,
    /// The Rego package whose `deny` and `warn` rules are read (conftest's default: `main`).
    #[serde(default = "default_package")]
    pub package: String,
    /// `v1` (OPA 1.0: `deny contains msg if {…}`) or `v0` (older conftest policies:
    /// `deny[msg] {…}`).
    #[serde(default)]
    pub rego: RegoSyntax,
    /// `"approvers"`: on a push, an apply or destroy this set denies waits for an approver
    /// (`[approvals] users`) instead of failing, and runs with the denies recorded as overridden
    /// once one approves. Default: a deny is final.
    #[serde(default, rename = "override")]
    pub override_by: Option<PolicyOverride>,
}

/// Who may override a set's denies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyOverride {
    /// The approvers of `[approvals] users`, through `pipelines approve`.
    Approvers,
}

impl PolicySet {
    /// The set's name in results: `name`, or the last component of `path`.
    pub fn display_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            self.path.file_name().map_or_else(
                || self.path.display().to_string(),
                |name| name.to_string_lossy().into_owned(),
            )
        })
    }

    /// Which accounts and units the set governs, its globs compiled once (validated at load;
    /// one that still fails to compile matches nothing).
    pub fn scope(&self) -> PolicyScope {
        let compile = |globs: &[String]| {
            globs
                .iter()
                .filter_map(|glob| compile_glob(glob).ok())
                .collect()
        };
        PolicyScope {
            accounts: compile(&self.accounts),
            units: compile(&self.units),
        }
    }
}

/// A policy set's `accounts` and `units`, compiled.
#[derive(Debug, Clone)]
pub struct PolicyScope {
    accounts: Vec<GlobMatcher>,
    units: Vec<GlobMatcher>,
}

impl PolicyScope {
    /// Whether the set applies to `unit` of `account`.
    pub fn applies_to(&self, account: &str, unit: &str) -> bool {
        self.accounts.iter().any(|glob| glob.is_match(account))
            && self.units.iter().any(|glob| glob.is_match(unit))
    }
}

/// What a set's `deny` results do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyMode {
    #[default]
    Deny,
    Warn,
}

/// The Rego syntax a set is written in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegoSyntax {
    #[default]
    V1,
    V0,
}

/// `[policy]`: the limits of every evaluation.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySettings {
    /// How long one set may take to evaluate one plan; past it the job fails.
    #[serde(default = "default_time_budget")]
    pub time_budget: String,
    /// The largest plan JSON (`show -json`) evaluated; a larger one fails the job rather than
    /// pass unchecked.
    #[serde(default = "default_max_plan_bytes")]
    pub max_plan_bytes: u64,
}

impl Default for PolicySettings {
    fn default() -> PolicySettings {
        PolicySettings {
            time_budget: default_time_budget(),
            max_plan_bytes: default_max_plan_bytes(),
        }
    }
}

impl PolicySettings {
    /// The time budget (validated at load).
    pub fn time_budget(&self) -> Duration {
        parse_duration(&self.time_budget).unwrap_or(Duration::from_secs(2))
    }
}

fn everything() -> Vec<String> {
    vec!["*".to_owned()]
}

fn every_unit() -> Vec<String> {
    vec!["**".to_owned()]
}

fn default_package() -> String {
    "main".to_owned()
}

fn default_time_budget() -> String {
    "2s".to_owned()
}

/// 8 MiB: a plan of several thousand resources.
fn default_max_plan_bytes() -> u64 {
    8 * 1024 * 1024
}

/// Rego package names: dot-separated identifiers.
fn is_package(name: &str) -> bool {
    !name.is_empty()
        && name.split('.').all(|part| {
            part.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

pub(crate) fn validate(
    sets: &[PolicySet],
    settings: &PolicySettings,
    approvers: &[String],
) -> Result<(), ConfigError> {
    let mut names = HashSet::new();
    for (i, set) in sets.iter().enumerate() {
        let key = |field: &str| format!("policies[{i}].{field}");
        if set.path.as_os_str().is_empty() {
            return Err(invalid(key("path"), "is empty"));
        }
        let name = set.display_name();
        if !names.insert(name.clone()) {
            return Err(invalid(
                key("name"),
                format!("{name:?} names two policy sets: give each its own `name`"),
            ));
        }
        for (field, globs) in [("accounts", &set.accounts), ("units", &set.units)] {
            if globs.is_empty() {
                return Err(invalid(key(field), "at least one glob is needed"));
            }
            for (j, glob) in globs.iter().enumerate() {
                if let Err(err) = compile_glob(glob) {
                    return Err(invalid(format!("policies[{i}].{field}[{j}]"), err));
                }
            }
        }
        if set.override_by.is_some() && approvers.is_empty() {
            return Err(invalid(
                key("override"),
                "\"approvers\" needs at least one broker user in approvals.users",
            ));
        }
        if !is_package(&set.package) {
            return Err(invalid(
                key("package"),
                format!(
                    "{:?} is not a Rego package name (like `main` or `terraform.aws`)",
                    set.package
                ),
            ));
        }
    }
    let budget =
        parse_duration(&settings.time_budget).map_err(|err| invalid("policy.time_budget", err))?;
    if budget.is_zero() {
        return Err(invalid("policy.time_budget", "must be more than zero"));
    }
    if settings.max_plan_bytes == 0 {
        return Err(invalid("policy.max_plan_bytes", "must be more than zero"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::testing::with;

    #[test]
    fn a_policy_set_needs_only_a_path_and_defaults_to_deny_in_package_main_for_everything() {
        let config = with("[[policies]]\npath = \"/etc/pipelines/policies/security\"\n").unwrap();
        let set = &config.policies[0];
        assert_eq!(set.display_name(), "security");
        assert_eq!(set.mode, super::PolicyMode::Deny);
        assert_eq!(set.package, "main");
        assert_eq!(set.rego, super::RegoSyntax::V1);
        assert_eq!(
            set.override_by, None,
            "a deny is final unless the set says otherwise"
        );
        let config = with(
            "[[policies]]\npath = \"p\"\noverride = \"approvers\"\n[approvals]\nusers = [\"alice\"]\n",
        )
        .unwrap();
        assert_eq!(
            config.policies[0].override_by,
            Some(super::PolicyOverride::Approvers)
        );
        assert!(set.scope().applies_to("prod", "prod/app/db"));
        assert_eq!(
            config.policy.time_budget(),
            std::time::Duration::from_secs(2)
        );
    }

    #[test]
    fn sets_apply_only_to_matching_accounts_and_units() {
        let config = with(
            "[[policies]]\npath = \"p\"\naccounts = [\"prod*\"]\nunits = [\"prod/**\"]\nmode = \"warn\"\nrego = \"v0\"\n",
        )
        .unwrap();
        let set = &config.policies[0];
        let scope = set.scope();
        assert!(scope.applies_to("prod-eu", "prod/app"));
        assert!(!scope.applies_to("dev", "prod/app"));
        assert!(!scope.applies_to("prod", "dev/app"));
        assert_eq!(set.mode, super::PolicyMode::Warn);
        assert_eq!(set.rego, super::RegoSyntax::V0);
    }

    #[test]
    fn bad_policy_settings_name_their_key() {
        let cases = [
            ("[[policies]]\npath = \"\"\n", "policies[0].path"),
            (
                "[[policies]]\npath = \"p\"\nunits = [\"[\"]\n",
                "policies[0].units[0]",
            ),
            (
                "[[policies]]\npath = \"p\"\naccounts = []\n",
                "policies[0].accounts",
            ),
            (
                "[[policies]]\npath = \"p\"\npackage = \"main;x\"\n",
                "policies[0].package",
            ),
            (
                "[[policies]]\npath = \"a/p\"\n[[policies]]\npath = \"b/p\"\n",
                "policies[1].name",
            ),
            (
                "[[policies]]\npath = \"p\"\noverride = \"approvers\"\n",
                "policies[0].override",
            ),
            ("[policy]\ntime_budget = \"soon\"\n", "policy.time_budget"),
            ("[policy]\nmax_plan_bytes = 0\n", "policy.max_plan_bytes"),
        ];
        for (toml, key) in cases {
            let err = with(toml).expect_err(toml).to_string();
            assert!(err.contains(&format!("`{key}`")), "{toml}: {err}");
        }
        let err = with("[[policies]]\npath = \"p\"\nmode = \"block\"\n").unwrap_err();
        assert!(err.to_string().contains("block"), "{err}");
    }
}
