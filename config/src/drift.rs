//! `[[drift]]`: which repositories the dispatcher checks for drift on a schedule, which of
//! their units, and whether a drift opens a pull request that brings the code's state back.

use croner::Cron;
use globset::GlobMatcher;
use serde::Deserialize;

use crate::{Config, ConfigError, compile_glob, invalid};

/// One repository's drift checks.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriftSchedule {
    /// A repository of `[[repositories]]`; its deploy branch's head is what is checked.
    pub repository: String,
    /// When to check, as a cron pattern in UTC (`0 */6 * * *`; a sixth leading field gives
    /// seconds). Absent: only `pipelines orchestrate --event drift` (a CI cron job) starts a
    /// drift run.
    #[serde(default)]
    pub schedule: Option<String>,
    /// Globs over repo-relative unit paths the scheduled check covers. Default: every unit.
    #[serde(default = "every_unit")]
    pub units: Vec<String>,
    /// Units never checked for drift, by any drift run of the repository (scheduled or not).
    #[serde(default)]
    pub exclude: Vec<String>,
    /// On a new drift, push a branch that records it in each drifted unit's
    /// `.drift-history.json` (to the repository's `url`, with the dispatcher's credentials for
    /// it) and open a pull request of it: merging it applies those units again.
    #[serde(default)]
    pub open_pull_request: bool,
}

fn every_unit() -> Vec<String> {
    vec!["**".to_owned()]
}

impl DriftSchedule {
    /// The schedule, parsed (validated at load).
    pub fn cron(&self) -> Option<Cron> {
        self.schedule.as_deref().and_then(|s| s.parse().ok())
    }

    /// The unit selection, globs compiled (validated at load).
    pub fn selection(&self) -> UnitSelection {
        UnitSelection::new(&self.units, &self.exclude).unwrap_or_default()
    }
}

/// Which units a drift run checks: those matching an include glob and no exclude glob.
#[derive(Debug, Clone, Default)]
pub struct UnitSelection {
    include: Vec<GlobMatcher>,
    exclude: Vec<GlobMatcher>,
}

impl UnitSelection {
    /// Compiles the globs; `Err` names the one that does not compile.
    pub fn new(include: &[String], exclude: &[String]) -> Result<UnitSelection, String> {
        let compile = |globs: &[String]| {
            globs
                .iter()
                .map(|glob| compile_glob(glob))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(UnitSelection {
            include: compile(include)?,
            exclude: compile(exclude)?,
        })
    }

    pub fn includes(&self, unit: &str) -> bool {
        self.include.iter().any(|glob| glob.is_match(unit)) && !self.excludes(unit)
    }

    pub fn excludes(&self, unit: &str) -> bool {
        self.exclude.iter().any(|glob| glob.is_match(unit))
    }
}

impl Config {
    /// The drift settings of a repository, if it has any.
    pub fn drift_of(&self, repository: &str) -> Option<&DriftSchedule> {
        self.drift.iter().find(|d| d.repository == repository)
    }
}

pub(crate) fn validate(config: &Config) -> Result<(), ConfigError> {
    for (i, drift) in config.drift.iter().enumerate() {
        if config.repository(&drift.repository).is_none() {
            return Err(invalid(
                format!("drift[{i}].repository"),
                format!(
                    "{:?} is not a repository of [[repositories]]",
                    drift.repository
                ),
            ));
        }
        if config.drift[..i]
            .iter()
            .any(|other| other.repository == drift.repository)
        {
            return Err(invalid(
                format!("drift[{i}].repository"),
                format!(
                    "{:?} has drift settings twice: keep one [[drift]] per repository",
                    drift.repository
                ),
            ));
        }
        if let Some(schedule) = &drift.schedule
            && let Err(err) = schedule.parse::<Cron>()
        {
            return Err(invalid(
                format!("drift[{i}].schedule"),
                format!("{schedule:?} is not a cron pattern like \"0 */6 * * *\": {err}"),
            ));
        }
        let named = config
            .repository(&drift.repository)
            .is_some_and(|r| r.github.is_some());
        if drift.open_pull_request && (config.github.is_none() || !named) {
            return Err(invalid(
                format!("drift[{i}].open_pull_request"),
                format!(
                    "opening a pull request needs the [github] section and the repository's \
                     github name (repositories.github of {:?})",
                    drift.repository
                ),
            ));
        }
        for (key, globs) in [("units", &drift.units), ("exclude", &drift.exclude)] {
            for (j, glob) in globs.iter().enumerate() {
                compile_glob(glob).map_err(|err| invalid(format!("drift[{i}].{key}[{j}]"), err))?;
            }
        }
    }
    if config.dispatcher.drift_jobs_per_account == 0 {
        return Err(invalid(
            "dispatcher.drift_jobs_per_account",
            "must be at least 1, or drift runs never start",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::Config;

    fn load(extra: &str) -> Result<Config, String> {
        let text = format!(
            "[[repositories]]\nname = \"infra\"\nurl = \"file:///srv/infra.git\"\n\
             [[accounts]]\nname = \"dev\"\npaths = [\"**\"]\n{extra}"
        );
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().join("pipelines.toml");
        std::fs::write(&path, text).map_err(|e| e.to_string())?;
        Config::load(&path).map_err(|e| e.to_string())
    }

    #[test]
    fn drift_settings_are_checked_naming_the_key() {
        let cases = [
            (
                "[[drift]]\nrepository = \"other\"\n",
                "`drift[0].repository`: \"other\" is not a repository",
            ),
            (
                "[[drift]]\nrepository = \"infra\"\nschedule = \"every hour\"\n",
                "`drift[0].schedule`: \"every hour\" is not a cron pattern",
            ),
            (
                "[[drift]]\nrepository = \"infra\"\nexclude = [\"a/[\"]\n",
                "`drift[0].exclude[0]`: invalid glob",
            ),
            (
                "[[drift]]\nrepository = \"infra\"\n[[drift]]\nrepository = \"infra\"\n",
                "`drift[1].repository`: \"infra\" has drift settings twice",
            ),
            (
                "[[drift]]\nrepository = \"infra\"\nopen_pull_request = true\n",
                "`drift[0].open_pull_request`: opening a pull request needs the [github] section",
            ),
            (
                "[dispatcher]\ndrift_jobs_per_account = 0\n",
                "`dispatcher.drift_jobs_per_account`: must be at least 1",
            ),
        ];
        for (extra, expected) in cases {
            let err = load(extra).unwrap_err();
            assert!(err.contains(expected), "{extra}: {err}");
        }
    }

    #[test]
    fn a_schedule_selects_units_by_glob_minus_exclusions() {
        let config = load(
            "[[drift]]\nrepository = \"infra\"\nschedule = \"*/5 * * * * *\"\n\
             units = [\"prod/**\"]\nexclude = [\"prod/scratch/**\"]\n",
        )
        .unwrap();
        let drift = config.drift_of("infra").unwrap();
        assert!(drift.cron().is_some());
        let selection = drift.selection();
        assert!(selection.includes("prod/vpc"));
        assert!(!selection.includes("dev/vpc"));
        assert!(!selection.includes("prod/scratch/tmp"));
        assert!(selection.excludes("prod/scratch/tmp"));
        assert!(config.drift_of("nope").is_none());
        let default = load("[[drift]]\nrepository = \"infra\"\n").unwrap();
        assert!(default.drift[0].selection().includes("any/unit"));
        assert!(default.drift[0].cron().is_none());
    }
}
