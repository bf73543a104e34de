//! Unit discovery: which directories of a snapshot are units, how they run, and what they
//! depend on.
//!
//! A unit is a directory other than the repository root that holds `terragrunt.hcl` (run with
//! terragrunt), or a plain root module: a `pipelines.hcl` file, or `.tf`/`.tofu` files
//! declaring a backend (run with tofu or terraform). Dependencies come from terragrunt
//! `dependency`/`dependencies` blocks and, for plain units, `dependencies = [...]` in
//! `pipelines.hcl`; paths are relative to the unit.

use std::collections::{BTreeMap, BTreeSet};

use hcl::{Body, Expression};

use crate::paths::{file_name, join, parent};
use crate::snapshot::Snapshot;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitKind {
    Terragrunt,
    Plain,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    pub path: String,
    pub kind: UnitKind,
    /// Repo-relative paths of the units this one reads outputs from, sorted.
    pub dependencies: Vec<String>,
}

/// The units of one snapshot, by path, with what could not be understood.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnitIndex {
    pub units: BTreeMap<String, Unit>,
    pub warnings: Vec<String>,
}

impl UnitIndex {
    pub fn contains(&self, path: &str) -> bool {
        self.units.contains_key(path)
    }

    pub fn dependencies_of(&self, path: &str) -> &[String] {
        self.units.get(path).map_or(&[], |unit| &unit.dependencies)
    }
}

/// Directories Terraform and Terragrunt write into; committed by mistake, never units.
fn is_cache_path(path: &str) -> bool {
    path.split('/')
        .any(|part| part == ".terraform" || part == ".terragrunt-cache")
}

#[derive(Default)]
struct DirFiles<'a> {
    terragrunt: Option<&'a str>,
    pipelines: Option<&'a str>,
    sources: Vec<&'a str>,
}

pub fn discover(snapshot: &Snapshot) -> UnitIndex {
    let mut dirs: BTreeMap<&str, DirFiles<'_>> = BTreeMap::new();
    for path in &snapshot.files {
        let dir = parent(path);
        if dir.is_empty() || is_cache_path(path) {
            continue;
        }
        let name = file_name(path);
        let entry = dirs.entry(dir).or_default();
        match name {
            "terragrunt.hcl" => entry.terragrunt = Some(path),
            "pipelines.hcl" => entry.pipelines = Some(path),
            _ if name.ends_with(".tf") || name.ends_with(".tofu") => entry.sources.push(path),
            _ => {}
        }
    }

    let mut index = UnitIndex::default();
    let mut raw_dependencies: Vec<(String, Vec<String>)> = Vec::new();
    for (dir, files) in dirs {
        let (kind, dependencies) = if let Some(config) = files.terragrunt {
            let deps = parse_config(
                snapshot,
                config,
                terragrunt_dependencies,
                &mut index.warnings,
            );
            (UnitKind::Terragrunt, deps)
        } else if let Some(config) = files.pipelines {
            let deps = parse_config(
                snapshot,
                config,
                pipelines_dependencies,
                &mut index.warnings,
            );
            (UnitKind::Plain, deps)
        } else if files
            .sources
            .iter()
            .any(|source| declares_backend(snapshot, source, &mut index.warnings))
        {
            (UnitKind::Plain, Vec::new())
        } else {
            continue;
        };
        let mut resolved = BTreeSet::new();
        for relative in dependencies {
            match join(dir, &relative) {
                Some(target) if !target.is_empty() => {
                    resolved.insert(target);
                }
                _ => index.warnings.push(format!(
                    "{dir}: dependency {relative:?} points outside the repository; ignored"
                )),
            }
        }
        raw_dependencies.push((dir.to_owned(), resolved.into_iter().collect()));
        index.units.insert(
            dir.to_owned(),
            Unit {
                path: dir.to_owned(),
                kind,
                dependencies: Vec::new(),
            },
        );
    }

    // Second pass, once every unit is known: keep dependencies that name units.
    for (dir, dependencies) in raw_dependencies {
        let (known, unknown): (Vec<String>, Vec<String>) = dependencies
            .into_iter()
            .partition(|target| index.units.contains_key(target));
        for target in unknown {
            index
                .warnings
                .push(format!("{dir}: dependency {target} is not a unit; ignored"));
        }
        if let Some(unit) = index.units.get_mut(&dir) {
            unit.dependencies = known;
        }
    }
    index
}

/// Parses a unit's configuration and extracts dependency paths with `extract`. A file that
/// does not parse still makes a unit; it just contributes no dependencies, with a warning.
fn parse_config(
    snapshot: &Snapshot,
    path: &str,
    extract: fn(&Body, &str, &mut Vec<String>) -> Vec<String>,
    warnings: &mut Vec<String>,
) -> Vec<String> {
    let Some(text) = snapshot.content(path) else {
        warnings.push(format!("{path}: not valid UTF-8; dependencies unknown"));
        return Vec::new();
    };
    match hcl::parse(text) {
        Ok(body) => extract(&body, path, warnings),
        Err(err) => {
            warnings.push(format!(
                "{path}: {}; dependencies unknown",
                one_line(&err.to_string())
            ));
            Vec::new()
        }
    }
}

/// `dependency "x" { config_path = "../x" }` and `dependencies { paths = ["../x"] }`.
fn terragrunt_dependencies(body: &Body, path: &str, warnings: &mut Vec<String>) -> Vec<String> {
    let mut found = Vec::new();
    for block in body.blocks() {
        let wanted = match block.identifier() {
            "dependency" => "config_path",
            "dependencies" => "paths",
            _ => continue,
        };
        for attribute in block.body().attributes().filter(|a| a.key() == wanted) {
            literal_strings(attribute.expr(), path, wanted, &mut found, warnings);
        }
    }
    found
}

/// `dependencies = ["../x", ...]` at the top level of `pipelines.hcl`.
fn pipelines_dependencies(body: &Body, path: &str, warnings: &mut Vec<String>) -> Vec<String> {
    let mut found = Vec::new();
    for attribute in body.attributes().filter(|a| a.key() == "dependencies") {
        literal_strings(attribute.expr(), path, "dependencies", &mut found, warnings);
    }
    found
}

fn literal_strings(
    expr: &Expression,
    path: &str,
    key: &str,
    found: &mut Vec<String>,
    warnings: &mut Vec<String>,
) {
    match expr {
        Expression::String(value) => found.push(value.clone()),
        Expression::Array(items) => {
            for item in items {
                literal_strings(item, path, key, found, warnings);
            }
        }
        _ => warnings.push(format!(
            "{path}: `{key}` is not a literal string or list of strings; that dependency is unknown"
        )),
    }
}

/// Whether a Terraform source declares a backend (or `cloud`) inside a `terraform` block:
/// what makes a directory of `.tf` files a root module rather than a library module.
fn declares_backend(snapshot: &Snapshot, path: &str, warnings: &mut Vec<String>) -> bool {
    let Some(text) = snapshot.content(path) else {
        return false;
    };
    // Cheap pre-filter: most library modules never mention a backend.
    if !text.contains("backend") && !text.contains("cloud") {
        return false;
    }
    match hcl::parse(text) {
        Ok(body) => body
            .blocks()
            .filter(|b| b.identifier() == "terraform")
            .any(|terraform| {
                terraform
                    .body()
                    .blocks()
                    .any(|b| matches!(b.identifier(), "backend" | "cloud"))
            }),
        Err(err) => {
            // Conservative: a broken file that mentions a backend is treated as a unit, so a
            // change to it is planned (and fails loudly) instead of being silently missed.
            let fallback = text.contains("backend \"");
            warnings.push(format!(
                "{path}: {}; treated as {}",
                one_line(&err.to_string()),
                if fallback { "a unit" } else { "not a unit" }
            ));
            fallback
        }
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const BACKEND: &str = "terraform {\n  backend \"local\" {}\n}\n";

    fn units(index: &UnitIndex) -> Vec<(&str, UnitKind, Vec<&str>)> {
        index
            .units
            .values()
            .map(|u| {
                (
                    u.path.as_str(),
                    u.kind,
                    u.dependencies.iter().map(String::as_str).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn units_are_terragrunt_dirs_pipelines_dirs_and_root_modules_but_not_the_root() {
        let snapshot = Snapshot::from_files([
            ("terragrunt.hcl", ""),
            ("main.tf", BACKEND),
            (
                "live/app/terragrunt.hcl",
                "dependency \"vpc\" {\n  config_path = \"../vpc\"\n}\n",
            ),
            ("live/vpc/terragrunt.hcl", ""),
            ("plain/db/main.tf", BACKEND),
            ("plain/api/pipelines.hcl", "dependencies = [\"../db\"]\n"),
            ("plain/api/main.tf", "output \"x\" { value = 1 }\n"),
            ("modules/lib/main.tf", "variable \"x\" {}\n"),
            ("plain/db/.terraform/modules/m/main.tf", BACKEND),
            ("README.md", "# hi"),
        ]);
        let index = discover(&snapshot);
        assert_eq!(
            units(&index),
            [
                ("live/app", UnitKind::Terragrunt, vec!["live/vpc"]),
                ("live/vpc", UnitKind::Terragrunt, vec![]),
                ("plain/api", UnitKind::Plain, vec!["plain/db"]),
                ("plain/db", UnitKind::Plain, vec![]),
            ]
        );
        assert!(index.warnings.is_empty(), "{:?}", index.warnings);
    }

    #[test]
    fn terragrunt_dependencies_blocks_are_read() {
        let snapshot = Snapshot::from_files([
            (
                "a/terragrunt.hcl",
                "dependencies {\n  paths = [\"../b\", \"../c\"]\n}\n",
            ),
            ("b/terragrunt.hcl", ""),
            ("c/terragrunt.hcl", ""),
        ]);
        assert_eq!(discover(&snapshot).dependencies_of("a"), ["b", "c"]);
    }

    #[test]
    fn what_cannot_be_understood_is_a_warning_not_a_crash() {
        let snapshot = Snapshot::from_files([
            (
                "a/pipelines.hcl",
                "dependencies = [\"../../../outside\", \"../missing\"]\n",
            ),
            ("b/pipelines.hcl", "dependencies = [local.x]\n"),
            ("c/pipelines.hcl", "dependencies = [\n"),
            ("d/main.tf", "terraform {\n backend \"local\" {\n"),
        ]);
        let index = discover(&snapshot);
        assert_eq!(index.units.keys().collect::<Vec<_>>(), ["a", "b", "c", "d"]);
        let warnings = index.warnings.join("\n");
        for needle in [
            "a: dependency \"../../../outside\"",
            "a: dependency missing",
            "b/pipelines.hcl",
            "c/pipelines.hcl",
            "d/main.tf",
        ] {
            assert!(
                warnings.contains(needle),
                "no warning about {needle}: {warnings}"
            );
        }
    }
}
