//! The multi-account scenario most end-to-end tests share: 12 outputs-only units in 5
//! dependency layers across two accounts, some dependencies crossing accounts.
//!
//! Each unit stores its state with the local backend outside the repository and reads its
//! dependencies' outputs through `terraform_remote_state`. Its output embeds theirs, so the
//! state files prove the order: applying a unit before its dependencies fails, and applying it
//! after them records their values.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::process::Finished;
use crate::sandbox::Sandbox;
use crate::summary_rows;

/// (unit, dependencies). Layers: 0 = networks and dev/dns; 4 = prod/monitoring.
pub const UNITS: &[(&str, &[&str])] = &[
    ("dev/network", &[]),
    ("dev/dns", &[]),
    ("prod/network", &[]),
    ("dev/database", &["dev/network"]),
    ("dev/cache", &["dev/network"]),
    ("prod/dns", &["dev/dns"]),
    ("prod/database", &["prod/network"]),
    ("prod/cache", &["prod/network", "dev/cache"]),
    ("dev/app", &["dev/database", "dev/cache"]),
    ("prod/app", &["prod/database", "prod/cache", "prod/dns"]),
    ("dev/monitoring", &["dev/app", "prod/network"]),
    ("prod/monitoring", &["prod/app", "dev/monitoring"]),
];

/// Changed between c1 and c2.
pub const CHANGED_IN_C2: &[&str] = &["dev/database", "prod/cache"];
/// Deleted between c1 and c2: a leaf nothing depends on.
pub const DELETED_IN_C2: &str = "prod/monitoring";

pub fn dependencies(unit: &str) -> &'static [&'static str] {
    UNITS
        .iter()
        .find(|(name, _)| *name == unit)
        .map(|(_, deps)| *deps)
        .unwrap_or_default()
}

/// `main.tf` of a unit at `version`.
pub fn unit_tf(unit: &str, version: u32, state_dir: &Path) -> String {
    let state = state_dir.display();
    let mut text = format!(
        "terraform {{\n  backend \"local\" {{\n    path = \"{state}/{unit}.tfstate\"\n  }}\n}}\n\n"
    );
    let mut refs = Vec::new();
    for (i, dependency) in dependencies(unit).iter().enumerate() {
        text.push_str(&format!(
            "data \"terraform_remote_state\" \"dep{i}\" {{\n  backend = \"local\"\n  config = {{\n    path = \"{state}/{dependency}.tfstate\"\n  }}\n}}\n\n"
        ));
        refs.push(format!(
            "${{data.terraform_remote_state.dep{i}.outputs.value}}"
        ));
    }
    text.push_str(&format!(
        "output \"value\" {{\n  value = \"{unit}@{version}[{}]\"\n}}\n",
        refs.join(",")
    ));
    text
}

/// `pipelines.hcl` of a unit: marks it as a unit and lists its dependencies.
pub fn pipelines_hcl(unit: &str) -> String {
    let deps: Vec<String> = dependencies(unit)
        .iter()
        .map(|d| format!("\"../../{d}\""))
        .collect();
    format!("dependencies = [{}]\n", deps.join(", "))
}

/// The output a unit has when every unit was applied in order at the given versions.
pub fn expected_output(unit: &str, versions: &BTreeMap<&str, u32>) -> String {
    let inner: Vec<String> = dependencies(unit)
        .iter()
        .map(|d| expected_output(d, versions))
        .collect();
    format!(
        "{unit}@{}[{}]",
        versions.get(unit).copied().unwrap_or(1),
        inner.join(",")
    )
}

/// A repository with the scenario's commits, a state directory and a Terraform environment.
#[derive(Debug)]
pub struct Fixture {
    pub sandbox: Sandbox,
    /// README only.
    pub c0: String,
    /// Every unit at version 1.
    pub c1: String,
    /// [`CHANGED_IN_C2`] at version 2, [`DELETED_IN_C2`] removed.
    pub c2: String,
}

impl Fixture {
    pub fn new() -> Fixture {
        Fixture::build(None)
    }

    /// Like [`Fixture::new`], but `broken` has invalid HCL in c1.
    pub fn with_broken_unit(broken: &str) -> Fixture {
        Fixture::build(Some(broken))
    }

    fn build(broken: Option<&str>) -> Fixture {
        let sandbox = Sandbox::new();
        let state_dir = sandbox.state_dir();
        let repo = &sandbox.repo;
        repo.write("README.md", "# infrastructure\n");
        let c0 = repo.commit("c0: readme");
        for (unit, _) in UNITS {
            let mut tf = unit_tf(unit, 1, &state_dir);
            if broken == Some(unit) {
                tf.push_str("output \"broken\" {\n  value = \n");
            }
            repo.write(&format!("{unit}/main.tf"), &tf);
            repo.write(&format!("{unit}/pipelines.hcl"), &pipelines_hcl(unit));
        }
        let c1 = repo.commit("c1: every unit");
        for unit in CHANGED_IN_C2 {
            repo.write(&format!("{unit}/main.tf"), &unit_tf(unit, 2, &state_dir));
        }
        repo.remove_dir(DELETED_IN_C2);
        let c2 = repo.commit("c2: change two units, delete a leaf");
        Fixture {
            sandbox,
            c0,
            c1,
            c2,
        }
    }

    /// The policy file for this repository (named `infra`) and the two accounts.
    pub fn config(&self, broker_url: &str) -> PathBuf {
        self.config_with(broker_url, "")
    }

    /// [`Fixture::config`] with `dispatcher` lines added.
    pub fn config_with(&self, broker_url: &str, dispatcher: &str) -> PathBuf {
        self.sandbox.write_config(
            broker_url,
            &[("dev", "dev/**"), ("prod", "prod/**")],
            dispatcher,
        )
    }

    /// The `value` output of a unit's state, or `None` when it has no state or no outputs.
    pub fn output_of(&self, unit: &str) -> Option<String> {
        let path = self.state_dir().join(format!("{unit}.tfstate"));
        let text = std::fs::read_to_string(path).ok()?;
        let state: serde_json::Value = serde_json::from_str(&text).unwrap();
        state["outputs"]["value"]["value"]
            .as_str()
            .map(str::to_owned)
    }

    /// Every state file with its content and modification time.
    pub fn state_fingerprint(&self) -> BTreeMap<String, (Vec<u8>, SystemTime)> {
        let mut found = BTreeMap::new();
        let mut stack = vec![self.state_dir()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    let modified = path.metadata().unwrap().modified().unwrap();
                    found.insert(
                        path.display().to_string(),
                        (std::fs::read(&path).unwrap(), modified),
                    );
                }
            }
        }
        found
    }

    /// Asserts every unit's output is what applying all of them in order at `versions` gives.
    pub fn assert_all_applied_in_order(&self, versions: &BTreeMap<&str, u32>) {
        for (unit, _) in UNITS {
            assert_eq!(
                self.output_of(unit).as_deref(),
                Some(expected_output(unit, versions).as_str()),
                "output of {unit}"
            );
        }
    }
}

impl std::ops::Deref for Fixture {
    type Target = Sandbox;

    fn deref(&self) -> &Sandbox {
        &self.sandbox
    }
}

impl Default for Fixture {
    fn default() -> Fixture {
        Fixture::new()
    }
}

/// The outcome checks both modes share, so that embedded and distributed runs are held to
/// exactly the same standard.
impl Fixture {
    /// c0 → c1 pushed: every unit applied in order, each routed by its path.
    pub fn check_first_push(&self, run: &Finished) {
        assert_eq!(run.code(), Some(0), "{}", run.transcript());
        self.assert_all_applied_in_order(&BTreeMap::new());
        let rows = summary_rows(&run.stdout);
        assert_eq!(rows.len(), UNITS.len(), "{}", run.stdout);
        for (unit, (action, account, result)) in &rows {
            assert_eq!(
                (action.as_str(), result.as_str()),
                ("apply", "succeeded"),
                "{unit}"
            );
            assert_eq!(account, account_of(unit), "{unit} routed by its path glob");
        }
    }

    /// c1 → c2 as a pull request after c1 was applied: plans exactly the changed and deleted
    /// units. Call [`Fixture::state_fingerprint`] before the run and pass it in.
    pub fn check_pull_request(
        &self,
        run: &Finished,
        before: &BTreeMap<String, (Vec<u8>, SystemTime)>,
    ) {
        assert_eq!(run.code(), Some(0), "{}", run.transcript());
        let mut expected: BTreeMap<String, (String, String, String)> = BTreeMap::new();
        for unit in CHANGED_IN_C2 {
            expected.insert(
                (*unit).into(),
                ("plan".into(), account_of(unit).into(), "succeeded".into()),
            );
        }
        expected.insert(
            DELETED_IN_C2.into(),
            (
                "plan-destroy".into(),
                account_of(DELETED_IN_C2).into(),
                "succeeded".into(),
            ),
        );
        assert_eq!(summary_rows(&run.stdout), expected, "{}", run.stdout);
        assert!(
            self.state_fingerprint() == *before,
            "a pull-request run changed a state file"
        );
    }

    /// c1 → c2 pushed: changed units re-applied, the deleted one destroyed, the rest untouched.
    pub fn check_second_push(&self, run: &Finished) {
        assert_eq!(run.code(), Some(0), "{}", run.transcript());
        let rows = summary_rows(&run.stdout);
        assert_eq!(rows.len(), CHANGED_IN_C2.len() + 1, "{}", run.stdout);
        assert_eq!(rows[DELETED_IN_C2].0, "destroy", "{}", run.stdout);
        let v2: BTreeMap<&str, u32> = CHANGED_IN_C2.iter().map(|unit| (*unit, 2)).collect();
        for unit in CHANGED_IN_C2 {
            assert_eq!(rows[*unit].0, "apply", "{}", run.stdout);
            assert_eq!(
                self.output_of(unit),
                Some(expected_output(unit, &v2)),
                "{unit} re-applied at c2"
            );
        }
        assert_eq!(
            self.output_of(DELETED_IN_C2),
            None,
            "{DELETED_IN_C2} destroyed"
        );
        for (unit, _) in UNITS
            .iter()
            .filter(|(u, _)| !CHANGED_IN_C2.contains(u) && *u != DELETED_IN_C2)
        {
            assert_eq!(
                self.output_of(unit),
                Some(expected_output(unit, &BTreeMap::new())),
                "{unit} untouched"
            );
        }
    }

    /// c0 → c1 pushed with `broken` invalid: it fails, its dependents are skipped naming it,
    /// and every independent unit is applied.
    pub fn check_broken_push(&self, run: &Finished, broken: &str) {
        assert_eq!(run.code(), Some(1), "{}", run.transcript());
        let rows = summary_rows(&run.stdout);
        assert_eq!(rows[broken].2, "failed", "{}", run.stdout);
        let dependents = dependents_of(broken);
        assert!(!dependents.is_empty());
        for unit in &dependents {
            assert_eq!(
                rows[*unit].2,
                format!("skipped ({broken} apply failed)"),
                "{unit}: {}",
                run.stdout
            );
            assert_eq!(self.output_of(unit), None, "{unit} must not be applied");
        }
        for (unit, _) in UNITS
            .iter()
            .filter(|(u, _)| *u != broken && !dependents.contains(u))
        {
            assert_eq!(rows[*unit].2, "succeeded", "{unit}: {}", run.stdout);
            assert_eq!(
                self.output_of(unit),
                Some(expected_output(unit, &BTreeMap::new())),
                "{unit}"
            );
        }
        assert!(
            run.stdout.contains(&format!("{broken} (apply) output")),
            "the failure's output is shown: {}",
            run.stdout
        );
    }
}

/// The account a unit belongs to: its first path segment, as the test policy's globs say.
pub fn account_of(unit: &str) -> &str {
    unit.split('/').next().unwrap_or(unit)
}

/// Every unit that depends on `unit`, directly or not.
pub fn dependents_of(unit: &str) -> Vec<&'static str> {
    let mut found: Vec<&'static str> = Vec::new();
    let mut frontier = vec![unit.to_owned()];
    while let Some(current) = frontier.pop() {
        for (candidate, deps) in UNITS {
            if deps.contains(&current.as_str()) && !found.contains(candidate) {
                found.push(candidate);
                frontier.push((*candidate).to_owned());
            }
        }
    }
    found
}
