//! Units of one snapshot: which directories are units, what each reads and depends on, and the
//! reverse index from a file to the units that read it. Pure.
//!
//! A unit is a directory other than the repository root that holds `terragrunt.hcl` (run with
//! terragrunt), or a plain root module: a `pipelines.hcl` file, or `.tf`/`.tofu` files declaring
//! a backend (run with tofu or terraform). Plain units list their dependencies in
//! `pipelines.hcl` (`dependencies = ["../network"]`), Terragrunt units in `dependency` and
//! `dependencies` blocks.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::fast_hash::{FastMap, FastSet};
use crate::hcl::{Collector, Eval, Issue, ParseCache, Scope, ScopeKind, Value, resolve};
use crate::paths::{file_name, join, parent};
use crate::snapshot::Snapshot;
use crate::terraform::{declares_backend, is_terraform_source, module_reads};
use crate::terragrunt::ChainFile;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitKind {
    Terragrunt,
    Plain,
}

#[derive(Debug, Clone)]
pub struct Unit {
    pub path: String,
    pub kind: UnitKind,
    /// Repo-relative paths of the units this one reads outputs from, sorted. Empty until
    /// resolved; see [`UnitIndex::dependencies_resolved`].
    pub dependencies: Vec<String>,
    /// Dependency targets that are not units of this snapshot (deleted, or never were).
    pub missing_dependencies: Vec<String>,
    /// Whether some read could not be resolved, so its reads may be incomplete.
    pub uncertain: bool,
    /// Whether the directory holds `.tf`/`.tofu` files (Terraform runs there without a source).
    has_sources: bool,
    evaluated: bool,
    /// Dependencies still to be evaluated from these include-chain files (Terragrunt units).
    chain: Vec<Arc<ChainFile>>,
    dependencies_resolved: bool,
    /// Files read, as positions in the snapshot's file list; see [`UnitIndex::reads_of`].
    reads: Vec<u32>,
}

impl Unit {
    pub fn is_evaluated(&self) -> bool {
        self.evaluated
    }

    /// Whether [`Unit::dependencies`] is known (it is evaluated on demand for Terragrunt units).
    pub fn dependencies_resolved(&self) -> bool {
        self.dependencies_resolved
    }
}

/// The units of one snapshot and what they read.
#[derive(Debug, Clone, Default)]
pub struct UnitIndex {
    pub units: BTreeMap<String, Unit>,
    /// The snapshot's files, by position (reads are positions).
    files: Arc<[String]>,
    /// The reverse index, file → readers, as compressed rows: the units (as positions in
    /// `units`) reading file `i` are `readers[starts[i]..starts[i + 1]]`.
    starts: Vec<u32>,
    readers: Vec<u32>,
    issues: BTreeSet<Issue>,
    /// Configuration files (HCL, Terraform) that do not parse.
    broken: BTreeSet<String>,
    /// Only some directories were discovered (see [`UnitIndex::discover_among`]).
    partial: bool,
}

/// Which units to evaluate (discovery alone is cheap; evaluation reads every configuration).
#[derive(Debug, Clone, Copy)]
pub enum Evaluate<'a> {
    All,
    Only(&'a BTreeSet<String>),
}

impl UnitIndex {
    /// Discovers and evaluates every unit of `snapshot`, dependencies included.
    pub fn build(snapshot: &Snapshot) -> UnitIndex {
        let mut cache = ParseCache::default();
        cache.add_snapshot(snapshot);
        let mut index = UnitIndex::build_with(snapshot, &cache, Evaluate::All);
        index.resolve_dependencies(snapshot, &cache, Evaluate::All);
        index
    }

    /// Evaluates the dependencies of the selected evaluated units that are not resolved yet.
    pub(crate) fn resolve_dependencies(
        &mut self,
        snapshot: &Snapshot,
        cache: &ParseCache,
        which: Evaluate<'_>,
    ) {
        let selected: Box<dyn Iterator<Item = &Unit>> = match which {
            Evaluate::All => Box::new(self.units.values()),
            Evaluate::Only(wanted) => {
                Box::new(wanted.iter().filter_map(|path| self.units.get(path)))
            }
        };
        let todo: Vec<&Unit> = selected
            .filter(|unit| unit.evaluated && !unit.dependencies_resolved)
            .collect();
        let resolved = parallel_map(snapshot, cache, &todo, |ev, unit| {
            let (dependencies, issues) =
                crate::terragrunt::unit_dependencies(ev, &unit.chain, &unit.path);
            (unit.path.clone(), dependencies, issues)
        });
        for (path, dependencies, issues) in resolved {
            self.issues.extend(issues);
            self.set_dependencies(&path, dependencies, snapshot, cache);
        }
    }

    /// Whether `unit`'s dependencies are known (evaluated units only).
    pub fn dependencies_resolved(&self, unit: &str) -> bool {
        self.units
            .get(unit)
            .is_some_and(|unit| unit.dependencies_resolved)
    }

    fn set_dependencies(
        &mut self,
        path: &str,
        dependencies: BTreeSet<String>,
        snapshot: &Snapshot,
        cache: &ParseCache,
    ) {
        // A partial index (only the directories a diff touched) asks the snapshot itself.
        let (known, missing): (Vec<String>, Vec<String>) = dependencies
            .into_iter()
            .filter(|target| target != path)
            .partition(|target| {
                self.units.contains_key(target)
                    || (self.partial && is_unit_dir(snapshot, cache, target))
            });
        for target in &missing {
            self.issues.insert(Issue {
                file: path.to_owned(),
                line: None,
                message: format!("dependency {target} is not a unit; ignored"),
                uncertain: false,
            });
        }
        if let Some(unit) = self.units.get_mut(path) {
            unit.dependencies = known;
            unit.missing_dependencies = missing;
            unit.dependencies_resolved = true;
            unit.chain = Vec::new();
        }
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
        discover(snapshot, cache, None)
    }

    /// Finds which of `dirs` are units, and nothing else.
    pub(crate) fn discover_among(
        snapshot: &Snapshot,
        cache: &ParseCache,
        dirs: &FastSet<&str>,
    ) -> UnitIndex {
        let mut index = discover(snapshot, cache, Some(dirs));
        index.partial = true;
        index
    }

    /// Evaluates the units `evaluate` selects that were not evaluated yet.
    pub(crate) fn evaluate(
        &mut self,
        snapshot: &Snapshot,
        cache: &ParseCache,
        evaluate: Evaluate<'_>,
    ) {
        let todo: Vec<(String, UnitKind, bool)> = self
            .units
            .values()
            .filter(|unit| match evaluate {
                Evaluate::All => true,
                Evaluate::Only(wanted) => wanted.contains(&unit.path),
            })
            .filter(|unit| !unit.evaluated)
            .map(|unit| (unit.path.clone(), unit.kind, unit.has_sources))
            .collect();
        if todo.is_empty() {
            return;
        }
        let results = evaluate_parallel(snapshot, cache, &todo);
        self.files = snapshot.files.clone();
        self.absorb(results, snapshot, cache);
    }

    pub fn contains(&self, dir: &str) -> bool {
        self.units.contains_key(dir)
    }

    pub fn dependencies_of(&self, unit: &str) -> &[String] {
        self.units.get(unit).map_or(&[], |unit| &unit.dependencies)
    }

    /// Units whose configuration reads `file` (directly or through any chain), sorted.
    pub fn readers_of(&self, file: &str) -> Vec<&str> {
        let Ok(position) = self.files.binary_search_by(|f| f.as_str().cmp(file)) else {
            return Vec::new();
        };
        let (Some(&start), Some(&end)) = (self.starts.get(position), self.starts.get(position + 1))
        else {
            return Vec::new();
        };
        // Units by position: `units` iterates in the same order the readers were numbered in.
        let paths: Vec<&str> = self.units.keys().map(String::as_str).collect();
        self.readers[start as usize..end as usize]
            .iter()
            .map(|&unit| paths[unit as usize])
            .collect()
    }

    /// The files `unit` reads, its own configuration included; sorted.
    pub fn reads_of(&self, unit: &str) -> Vec<&str> {
        self.units
            .get(unit)
            .map(|unit| {
                unit.reads
                    .iter()
                    .filter_map(|&file| self.files.get(file as usize))
                    .map(String::as_str)
                    .collect()
            })
            .unwrap_or_default()
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
        self.units.get(unit).is_some_and(|unit| unit.evaluated)
    }

    /// Every problem found, as `file:line: message`, sorted and without repeats.
    pub fn warnings(&self) -> Vec<String> {
        let unique: BTreeSet<String> = self.issues.iter().map(ToString::to_string).collect();
        unique.into_iter().collect()
    }

    /// Takes evaluation results, in unit order, and rebuilds the reverse index.
    fn absorb(
        &mut self,
        results: Vec<(String, Collector, Dependencies)>,
        snapshot: &Snapshot,
        cache: &ParseCache,
    ) {
        let mut known_now = Vec::new();
        let mut results = results.into_iter().peekable();
        for (path, unit) in &mut self.units {
            let Some((_, found, dependencies)) = results.next_if(|(done, ..)| done == path) else {
                continue;
            };
            unit.uncertain = found.issues.iter().any(|issue| issue.uncertain);
            self.issues.extend(found.issues);
            unit.reads = found.reads;
            unit.evaluated = true;
            match dependencies {
                Dependencies::Known(dependencies) => known_now.push((path.clone(), dependencies)),
                Dependencies::Chain(chain) if chain.is_empty() => unit.dependencies_resolved = true,
                Dependencies::Chain(chain) => unit.chain = chain,
            }
        }
        for (path, dependencies) in known_now {
            self.set_dependencies(&path, dependencies, snapshot, cache);
        }
        // Counting sort into compressed rows: no hashing, two passes.
        let mut starts = vec![0_u32; self.files.len() + 1];
        for unit in self.units.values() {
            for &file in &unit.reads {
                starts[file as usize + 1] += 1;
            }
        }
        for i in 1..starts.len() {
            starts[i] += starts[i - 1];
        }
        let mut next = starts.clone();
        let mut readers = vec![0_u32; starts.last().copied().unwrap_or(0) as usize];
        for (position, unit) in self.units.values().enumerate() {
            for &file in &unit.reads {
                let slot = &mut next[file as usize];
                readers[*slot as usize] = u32::try_from(position).unwrap_or(u32::MAX);
                *slot += 1;
            }
        }
        self.starts = starts;
        self.readers = readers;
    }
}

/// Directories Terraform and Terragrunt write into; committed by mistake, never units.
fn is_cache_path(path: &str) -> bool {
    // Checked for every file: test for the common prefix before splitting.
    path.contains(".terra")
        && path
            .split('/')
            .any(|part| part == ".terraform" || part == ".terragrunt-cache")
}

/// Finds the units of a snapshot without evaluating them: everywhere, or only among `only`
/// (directories the diff touched, when nothing else of a commit is judged).
/// Whether `dir` is a unit at this snapshot, looking at its files only.
fn is_unit_dir(snapshot: &Snapshot, cache: &ParseCache, dir: &str) -> bool {
    !dir.is_empty()
        && snapshot.files_in(dir).any(|path| {
            let name = file_name(path);
            name == "terragrunt.hcl"
                || name == "pipelines.hcl"
                || (is_terraform_source(name) && declares_backend(snapshot, cache, path))
        })
}

fn discover(snapshot: &Snapshot, cache: &ParseCache, only: Option<&FastSet<&str>>) -> UnitIndex {
    let mut index = UnitIndex::default();
    if only.is_none() && cache.has_failures() {
        for (path, blob) in &snapshot.blobs {
            if is_cache_path(path) || !cache.failed(blob) {
                continue;
            }
            if let Some(issue) = cache
                .get_blob(blob)
                .and_then(|parsed| parsed.syntax_issue(path))
            {
                index.broken.insert(path.clone());
                index.issues.insert(issue);
            }
        }
    }
    #[derive(Default)]
    struct Markers<'a> {
        terragrunt: bool,
        pipelines: bool,
        sources: Vec<&'a str>,
    }
    let mut dirs: FastMap<&str, Markers<'_>> = FastMap::default();
    // Only the named directories' files when limited; every file otherwise.
    let candidates: Box<dyn Iterator<Item = &str>> = match only {
        Some(only) => Box::new(only.iter().flat_map(|dir| snapshot.files_in(dir))),
        None => Box::new(snapshot.files.iter().map(String::as_str)),
    };
    for path in candidates {
        let name = file_name(path);
        let marker =
            name == "terragrunt.hcl" || name == "pipelines.hcl" || is_terraform_source(name);
        if !marker {
            continue;
        }
        let dir = parent(path);
        if dir.is_empty() || is_cache_path(path) {
            continue;
        }
        let markers = dirs.entry(dir).or_default();
        match name {
            "terragrunt.hcl" => markers.terragrunt = true,
            "pipelines.hcl" => markers.pipelines = true,
            _ => markers.sources.push(path),
        }
    }
    for (dir, markers) in dirs {
        let has_sources = !markers.sources.is_empty();
        let kind = if markers.terragrunt {
            UnitKind::Terragrunt
        } else if markers.pipelines
            || markers
                .sources
                .iter()
                .any(|source| declares_backend(snapshot, cache, source))
        {
            UnitKind::Plain
        } else {
            continue;
        };
        index.units.insert(
            dir.to_owned(),
            Unit {
                path: dir.to_owned(),
                kind,
                dependencies: Vec::new(),
                missing_dependencies: Vec::new(),
                uncertain: false,
                has_sources,
                evaluated: false,
                chain: Vec::new(),
                dependencies_resolved: false,
                reads: Vec::new(),
            },
        );
    }
    index
}

/// Evaluates units on every core; each thread keeps its own memos.
fn evaluate_parallel(
    snapshot: &Snapshot,
    cache: &ParseCache,
    todo: &[(String, UnitKind, bool)],
) -> Vec<(String, Collector, Dependencies)> {
    parallel_map(snapshot, cache, todo, |ev, (path, kind, has_sources)| {
        let (found, dependencies) = evaluate_unit(ev, path, *kind, *has_sources);
        (path.clone(), found, dependencies)
    })
}

/// Maps `f` over `items` on every core, in order; each thread has its own [`Eval`] (and memos).
fn parallel_map<T: Sync, R: Send>(
    snapshot: &Snapshot,
    cache: &ParseCache,
    items: &[T],
    f: impl Fn(&mut Eval<'_>, &T) -> R + Sync,
) -> Vec<R> {
    if items.is_empty() {
        return Vec::new();
    }
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(items.len());
    let chunk = items.len().div_ceil(threads);
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    let mut ev = Eval::new(snapshot, cache);
                    part.iter().map(|item| f(&mut ev, item)).collect::<Vec<R>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}

/// A unit's dependencies: known at once (plain units), or to be evaluated from its include chain.
#[derive(Debug)]
pub(crate) enum Dependencies {
    Known(BTreeSet<String>),
    Chain(Vec<Arc<ChainFile>>),
}

/// Evaluates one unit with the memos of `ev`.
pub(crate) fn evaluate_unit(
    ev: &mut Eval<'_>,
    path: &str,
    kind: UnitKind,
    has_sources: bool,
) -> (Collector, Dependencies) {
    match kind {
        UnitKind::Terragrunt => {
            let findings = crate::terragrunt::evaluate_unit(ev, path, has_sources);
            (findings.found, Dependencies::Chain(findings.chain))
        }
        UnitKind::Plain => {
            let mut found = Collector::default();
            let dependencies = plain_dependencies(ev, path, &mut found);
            let module = module_reads(ev, path);
            found.merge(&module);
            (found.finish(), Dependencies::Known(dependencies))
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
    out.reads.extend(ev.snapshot.position(&config));
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
    let items: Vec<Value> = match value {
        Value::List(items) => items.to_vec(),
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

#[cfg(test)]
mod property_tests;
