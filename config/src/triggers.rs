//! `[triggers]`: what each change kind runs.

use serde::Deserialize;

use crate::{ConfigError, check_path, invalid};

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

/// Units named by triggers must be relative, normalized paths.
pub(crate) fn validate(triggers: &Triggers) -> Result<(), ConfigError> {
    for (name, trigger) in [
        ("triggers.accounts_requested", &triggers.accounts_requested),
        ("triggers.accounts_changed", &triggers.accounts_changed),
    ] {
        if let Some(trigger) = trigger
            && check_path(&trigger.unit).is_err()
        {
            return Err(invalid(
                format!("{name}.unit"),
                format!("{:?} is not a relative, normalized unit path", trigger.unit),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_triggered_unit_must_be_a_relative_normalized_path() {
        for bad in ["", "/abs", "a/../b", "a//b"] {
            let triggers = Triggers {
                accounts_changed: Some(UnitTrigger { unit: bad.into() }),
                ..Triggers::default()
            };
            let err = validate(&triggers).unwrap_err().to_string();
            assert!(
                err.contains("`triggers.accounts_changed.unit`")
                    && err.contains("is not a relative, normalized unit path"),
                "{bad:?}: {err}"
            );
        }
        let good = Triggers {
            accounts_requested: Some(UnitTrigger {
                unit: "_global/accounts".into(),
            }),
            ..Triggers::default()
        };
        assert!(validate(&good).is_ok());
    }
}
