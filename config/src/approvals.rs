//! `[approvals]` and `[[accounts]] require_approval`: which applies wait for a person, and who
//! may let them go.
//!
//! Approvers are broker users, named here by admins: an approval is a message whose `user_id`
//! RabbitMQ has checked against the connection's login, so nobody can approve under another
//! name, and nothing in the infrastructure repository can add an approver.

use std::time::Duration;

use globset::GlobMatcher;
use serde::Deserialize;

use crate::{Config, ConfigError, compile_glob, invalid, parse_duration};

/// `[approvals]`: who approves, which units besides gated accounts', and for how long a gated
/// job waits.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approvals {
    /// Broker users whose `pipelines approve` and `pipelines reject` count. Anyone else's
    /// order is refused, logged and dead-lettered.
    #[serde(default)]
    pub users: Vec<String>,
    /// Globs over repo-relative unit paths whose applies and destroys wait for an approval,
    /// whatever their account (accounts gate all of theirs with `require_approval = true`).
    #[serde(default)]
    pub units: Vec<String>,
    /// How long a gated job waits for an approval before it is cancelled: `24h`, `30m`.
    #[serde(default = "default_approval_timeout")]
    pub approval_timeout: String,
}

impl Default for Approvals {
    fn default() -> Approvals {
        Approvals {
            users: Vec::new(),
            units: Vec::new(),
            approval_timeout: default_approval_timeout(),
        }
    }
}

impl Approvals {
    /// The approval timeout (validated at load).
    pub fn timeout(&self) -> Duration {
        parse_duration(&self.approval_timeout).unwrap_or(Duration::from_secs(24 * 3600))
    }

    /// Whether `user` (a broker user) may approve or reject.
    pub fn is_approver(&self, user: &str) -> bool {
        self.users.iter().any(|approver| approver == user)
    }
}

fn default_approval_timeout() -> String {
    "24h".to_owned()
}

/// Which units' applies and destroys wait for an approval: the gated accounts' and the units
/// matching `[approvals] units`, globs compiled once.
#[derive(Debug, Clone, Default)]
pub struct ApprovalGates {
    accounts: Vec<String>,
    units: Vec<GlobMatcher>,
}

impl ApprovalGates {
    /// Globs were validated when the config was loaded; one that still fails to compile
    /// matches nothing.
    pub fn new(config: &Config) -> ApprovalGates {
        ApprovalGates {
            accounts: config
                .accounts
                .iter()
                .filter(|account| account.require_approval)
                .map(|account| account.name.clone())
                .collect(),
            units: config
                .approvals
                .units
                .iter()
                .filter_map(|glob| compile_glob(glob).ok())
                .collect(),
        }
    }

    /// Whether an apply or destroy of `unit` in `account` waits for an approval.
    pub fn gates(&self, account: &str, unit: &str) -> bool {
        self.accounts.iter().any(|gated| gated == account)
            || self.units.iter().any(|glob| glob.is_match(unit))
    }

    /// Whether any unit is gated at all.
    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty() && self.units.is_empty()
    }
}

pub(crate) fn validate(config: &Config) -> Result<(), ConfigError> {
    let approvals = &config.approvals;
    for (i, glob) in approvals.units.iter().enumerate() {
        compile_glob(glob).map_err(|err| invalid(format!("approvals.units[{i}]"), err))?;
    }
    for (i, user) in approvals.users.iter().enumerate() {
        if user.trim().is_empty() || user.chars().any(char::is_control) {
            return Err(invalid(
                format!("approvals.users[{i}]"),
                format!("{user:?} is not a broker user name"),
            ));
        }
    }
    let timeout = parse_duration(&approvals.approval_timeout)
        .map_err(|err| invalid("approvals.approval_timeout", err))?;
    if timeout.is_zero() {
        return Err(invalid(
            "approvals.approval_timeout",
            "must be more than zero",
        ));
    }
    let gated = config
        .accounts
        .iter()
        .find(|account| account.require_approval)
        .map(|account| format!("account {:?} has require_approval = true", account.name))
        .or_else(|| {
            (!approvals.units.is_empty()).then(|| "approvals.units gates some units".to_owned())
        });
    if let Some(gated) = gated
        && approvals.users.is_empty()
        && config.web.approvers.is_empty()
    {
        // Every gated job would wait for nobody and expire: refuse rather than find out a day
        // later.
        return Err(invalid(
            "approvals.users",
            format!(
                "{gated}, but nobody may approve: name at least one broker user (or a web page \
                 user in web.approvers)"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::Config;
    use crate::testing::{VALID, with};

    #[test]
    fn nothing_is_gated_by_default_and_approvals_expire_after_a_day() {
        let config = Config::from_toml(VALID).unwrap();
        let gates = super::ApprovalGates::new(&config);
        assert!(gates.is_empty());
        assert!(!gates.gates("prod", "prod/app"));
        assert_eq!(
            config.approvals.timeout(),
            std::time::Duration::from_secs(24 * 3600)
        );
    }

    #[test]
    fn an_account_or_a_unit_glob_gates_its_units() {
        let text = VALID.replace(
            "paths = [\"prod/**\"]",
            "paths = [\"prod/**\"]\nrequire_approval = true\n[[accounts]]\nname = \"dev\"\npaths = [\"dev/**\"]",
        );
        let config = Config::from_toml(&format!(
            "{text}\n[approvals]\nusers = [\"alice\"]\nunits = [\"dev/dns/**\"]\napproval_timeout = \"2h\"\n"
        ))
        .unwrap();
        let gates = super::ApprovalGates::new(&config);
        assert!(gates.gates("prod", "prod/app"));
        assert!(gates.gates("dev", "dev/dns/zone"));
        assert!(!gates.gates("dev", "dev/app"));
        assert!(config.approvals.is_approver("alice"));
        assert!(!config.approvals.is_approver("pipelines-orchestrator"));
        assert_eq!(
            config.approvals.timeout(),
            std::time::Duration::from_secs(7200)
        );
    }

    #[test]
    fn bad_approval_settings_name_their_key() {
        let gated = VALID.replace(
            "paths = [\"prod/**\"]",
            "paths = [\"prod/**\"]\nrequire_approval = true",
        );
        let err = Config::from_toml(&gated).unwrap_err().to_string();
        assert!(
            err.contains("`approvals.users`") && err.contains("\"prod\""),
            "{err}"
        );
        let cases = [
            (
                "[approvals]\nusers = [\"a\"]\nunits = [\"[\"]\n",
                "approvals.units[0]",
            ),
            ("[approvals]\nunits = [\"prod/**\"]\n", "approvals.users"),
            ("[approvals]\nusers = [\" \"]\n", "approvals.users[0]"),
            (
                "[approvals]\napproval_timeout = \"tomorrow\"\n",
                "approvals.approval_timeout",
            ),
        ];
        for (toml, key) in cases {
            let err = with(toml).expect_err(toml).to_string();
            assert!(err.contains(&format!("`{key}`")), "{toml}: {err}");
        }
    }
}
