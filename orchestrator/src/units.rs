//! Units of one snapshot: which directories are units, what each reads and depends on, and the
//! reverse index from a file to the units that read it. Pure.
//!
//! A unit is a directory other than the repository root that holds `terragrunt.hcl` (run with
//! terragrunt), or a plain root module: a `pipelines.hcl` file, or `.tf`/`.tofu` files declaring
//! a backend (run with tofu or terraform). Plain units list their dependencies in
//! `pipelines.hcl` (`dependencies = ["../network"]`), Terragrunt units in `dependency` and
//! `dependencies` blocks.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::hcl::{Collector, Eval, Issue, ParseCache, Scope, ScopeKind, Value, resolve};
use crate::paths::{file_name, join, parent};
use crate::snapshot::Snapshot;
use crate::terraform::{declares_backend, is_terraform_source, module_reads};

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
    /// Every file its configuration reads, its own configuration included.
    pub reads: BTreeSet<String>,
    /// Dependency targets that are not units of this snapshot (deleted, or never were).
    pub missing_dependencies: Vec<String>,
    /// Whether some read could not be resolved, so `reads` may be incomplete.
    pub uncertain: bool,
}

/// The units of one snapshot and what they read.
#[derive(Debug, Clone, Default)]
pub struct UnitIndex {
    pub units: BTreeMap<String, Unit>,
    readers: HashMap<String, Vec<String>>,
    issues: BTreeSet<Issue>,
    evaluated: BTreeSet<String>,
    /// Configuration files (HCL, Terraform) that do not parse.
    broken: BTreeSet<String>,
}

/// Which units to evaluate (discovery alone is cheap; evaluation reads every configuration).
#[derive(Debug, Clone, Copy)]
pub enum Evaluate<'a> {
    All,
    Only(&'a BTreeSet<String>),
}

impl UnitIndex {
    /// Discovers and evaluates every unit of `snapshot`.
    pub fn build(snapshot: &Snapshot) -> UnitIndex {
        let mut cache = ParseCache::default();
        cache.add_snapshot(snapshot);
        UnitIndex::build_with(snapshot, &cache, Evaluate::All)
    }

    pub(crate) fn build_with(
        snapshot: &Snapshot,
        cache: &ParseCache,
        evaluate: Evaluate<'_>,
    ) -> UnitIndex {
        let mut index = UnitIndex::discover(snapshot, cache);
        index.evaluate(snapshot, cache, evaluate);
        index
    }

    /// Finds the units of a snapshot (and its unparsable files) without evaluating them.
    pub(crate) fn discover(snapshot: &Snapshot, cache: &ParseCache) -> UnitIndex {
        discover(snapshot, cache)
    }

    /// Evaluates the units `evaluate` selects that were not evaluated yet.
    pub(crate) fn evaluate(
        &mut self,
        snapshot: &Snapshot,
        cache: &ParseCache,
        evaluate: Evaluate<'_>,
    ) {
        let todo: Vec<(String, UnitKind)> = self
            .units
            .values()
            .filter(|unit| match evaluate {
                Evaluate::All => true,
                Evaluate::Only(wanted) => wanted.contains(&unit.path),
            })
            .filter(|unit| !self.evaluated.contains(&unit.path))
            .map(|unit| (unit.path.clone(), unit.kind))
            .collect();
        let results = evaluate_parallel(snapshot, cache, &todo);
        self.absorb(results);
    }

    pub fn contains(&self, dir: &str) -> bool {
        self.units.contains_key(dir)
    }

    pub fn dependencies_of(&self, unit: &str) -> &[String] {
        self.units.get(unit).map_or(&[], |unit| &unit.dependencies)
    }

    /// Units whose configuration reads `file` (directly or through any chain).
    pub fn readers_of(&self, file: &str) -> &[String] {
        self.readers.get(file).map_or(&[], Vec::as_slice)
    }

    /// Units whose reads could not all be resolved.
    pub fn uncertain_units(&self) -> impl Iterator<Item = &Unit> {
        self.units.values().filter(|unit| unit.uncertain)
    }

    /// Whether `file` itself is not understood: it does not parse, or evaluating it hit
    /// something unresolvable.
    pub fn has_problem(&self, file: &str) -> bool {
        self.broken.contains(file)
            || self
                .issues
                .iter()
                .any(|issue| issue.uncertain && issue.file == file)
    }

    /// Units whose configuration names `unit` as a dependency although it is not a unit here.
    pub fn dependents_of_missing(&self, unit: &str) -> Vec<&str> {
        self.units
            .values()
            .filter(|u| u.missing_dependencies.iter().any(|d| d == unit))
            .map(|u| u.path.as_str())
            .collect()
    }

    pub fn is_evaluated(&self, unit: &str) -> bool {
        self.evaluated.contains(unit)
    }

    /// Every problem found, as `file:line: message`, sorted and without repeats.
    pub fn warnings(&self) -> Vec<String> {
        let unique: BTreeSet<String> = self.issues.iter().map(ToString::to_string).collect();
        unique.into_iter().collect()
    }

    fn absorb(&mut self, results: Vec<(String, Collector, BTreeSet<String>)>) {
        for (path, found, dependencies) in results {
            let (known, missing): (Vec<String>, Vec<String>) = dependencies
                .into_iter()
                .filter(|target| *target != path)
                .partition(|target| self.units.contains_key(target));
            for target in &missing {
                self.issues.insert(Issue {
                    file: path.clone(),
                    line: None,
                    message: format!("dependency {target} is not a unit; ignored"),
                    uncertain: false,
                });
            }
            for read in &found.reads {
                self.readers
                    .entry(read.clone())
                    .or_default()
                    .push(path.clone());
            }
            let uncertain = found.issues.iter().any(|issue| issue.uncertain);
            self.issues.extend(found.issues);
            if let Some(unit) = self.units.get_mut(&path) {
                unit.dependencies = known;
                unit.missing_dependencies = missing;
                unit.reads = found.reads;
                unit.uncertain = uncertain;
            }
            self.evaluated.insert(path);
        }
        for readers in self.readers.values_mut() {
            readers.sort_unstable();
            readers.dedup();
        }
    }
}

/// Directories Terraform and Terragrunt write into; committed by mistake, never units.
fn is_cache_path(path: &str) -> bool {
    path.split('/')
        .any(|part| part == ".terraform" || part == ".terragrunt-cache")
}

/// Finds the units of a snapshot without evaluating them.
fn discover(snapshot: &Snapshot, cache: &ParseCache) -> UnitIndex {
    let mut index = UnitIndex::default();
    for path in snapshot.blobs.keys() {
        if is_cache_path(path) {
            continue;
        }
        if let Some(issue) = cache
            .get(snapshot, path)
            .and_then(|parsed| parsed.syntax_issue(path))
        {
            index.broken.insert(path.clone());
            index.issues.insert(issue);
        }
    }
    #[derive(Default)]
    struct Markers<'a> {
        terragrunt: bool,
        pipelines: bool,
        sources: Vec<&'a str>,
    }
    let mut dirs: BTreeMap<&str, Markers<'_>> = BTreeMap::new();
    for path in &snapshot.files {
        let dir = parent(path);
        if dir.is_empty() || is_cache_path(path) {
            continue;
        }
        let name = file_name(path);
        let markers = dirs.entry(dir).or_default();
        match name {
            "terragrunt.hcl" => markers.terragrunt = true,
            "pipelines.hcl" => markers.pipelines = true,
            _ if is_terraform_source(name) => markers.sources.push(path),
            _ => {}
        }
    }
    for (dir, markers) in dirs {
        let kind = if markers.terragrunt {
            UnitKind::Terragrunt
        } else if markers.pipelines {
            UnitKind::Plain
        } else {
            let mut is_root_module = false;
            for source in &markers.sources {
                is_root_module |= declares_backend(snapshot, cache, source);
            }
            if !is_root_module {
                continue;
            }
            UnitKind::Plain
        };
        index.units.insert(
            dir.to_owned(),
            Unit {
                path: dir.to_owned(),
                kind,
                dependencies: Vec::new(),
                reads: BTreeSet::new(),
                missing_dependencies: Vec::new(),
                uncertain: false,
            },
        );
    }
    index
}

/// Evaluates units on every core; each thread keeps its own memos.
fn evaluate_parallel(
    snapshot: &Snapshot,
    cache: &ParseCache,
    todo: &[(String, UnitKind)],
) -> Vec<(String, Collector, BTreeSet<String>)> {
    if todo.is_empty() {
        return Vec::new();
    }
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(todo.len());
    let chunk = todo.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = todo
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    let mut ev = Eval::new(snapshot, cache);
                    part.iter()
                        .map(|(path, kind)| {
                            let (found, deps) = evaluate_unit(&mut ev, path, *kind);
                            (path.clone(), found, deps)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

/// Evaluates one unit with the memos of `ev`.
pub(crate) fn evaluate_unit(
    ev: &mut Eval<'_>,
    path: &str,
    kind: UnitKind,
) -> (Collector, BTreeSet<String>) {
    match kind {
        UnitKind::Terragrunt => {
            let findings = crate::terragrunt::evaluate_unit(ev, path);
            (findings.found, findings.dependencies)
        }
        UnitKind::Plain => {
            let mut found = Collector::default();
            let dependencies = plain_dependencies(ev, path, &mut found);
            let module = module_reads(ev, path);
            found.merge(&module);
            (found, dependencies)
        }
    }
}

/// `dependencies = [...]` in a plain unit's `pipelines.hcl`, relative to the unit.
fn plain_dependencies(ev: &mut Eval<'_>, unit: &str, out: &mut Collector) -> BTreeSet<String> {
    let mut dependencies = BTreeSet::new();
    let Some(config) = join(unit, "pipelines.hcl") else {
        return dependencies;
    };
    if !ev.snapshot.exists(&config) {
        return dependencies;
    }
    out.reads.insert(config.clone());
    let Some(parsed) = ev.cache.get(ev.snapshot, &config) else {
        return dependencies;
    };
    let body = match &parsed.body {
        Ok(body) => body,
        Err(_) => {
            // Its dependencies are unknown; the unit itself is still a unit.
            out.issues
                .extend(parsed.syntax_issue(&config).map(|issue| crate::hcl::Issue {
                    message: format!("{}; dependencies unknown", issue.message),
                    uncertain: false,
                    ..issue
                }));
            return dependencies;
        }
    };
    let Some(attribute) = body.get_attribute("dependencies") else {
        return dependencies;
    };
    let variables = BTreeMap::new();
    let scope = Scope {
        kind: ScopeKind::Terragrunt,
        file: &config,
        parsed: &parsed,
        dir: unit,
        includes: &[],
        locals: None,
        variables: &variables,
    };
    let value = ev.eval(&attribute.value, &scope, out);
    let items = match value {
        Value::List(items) => items,
        other => vec![other],
    };
    for item in items {
        match item.as_string().and_then(|text| resolve(&text, unit)) {
            Some(target) if !target.is_empty() => {
                dependencies.insert(target);
            }
            _ => out.issues.push(crate::hcl::Issue {
                file: config.clone(),
                line: None,
                message: format!(
                    "a dependency in `dependencies` is not a path inside the repository ({}); ignored",
                    item.unknown_reason().unwrap_or("leaves the repository")
                ),
                uncertain: false,
            }),
        }
    }
    dependencies
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
        let index = UnitIndex::build(&snapshot);
        assert_eq!(
            units(&index),
            [
                ("live/app", UnitKind::Terragrunt, vec!["live/vpc"]),
                ("live/vpc", UnitKind::Terragrunt, vec![]),
                ("plain/api", UnitKind::Plain, vec!["plain/db"]),
                ("plain/db", UnitKind::Plain, vec![]),
            ]
        );
        assert!(index.warnings().is_empty(), "{:?}", index.warnings());
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
        let index = UnitIndex::build(&snapshot);
        assert_eq!(index.units.keys().collect::<Vec<_>>(), ["a", "b", "c", "d"]);
        let warnings = index.warnings().join("\n");
        for needle in [
            "a/pipelines.hcl: a dependency",
            "a: dependency missing is not a unit",
            "b/pipelines.hcl",
            "c/pipelines.hcl:1: syntax error",
            "d/main.tf:2: syntax error",
        ] {
            assert!(
                warnings.contains(needle),
                "no warning about {needle}: {warnings}"
            );
        }
    }
}
