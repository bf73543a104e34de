//! Classification: from the units at both commits and the changed paths to the changes, the
//! dependency edges among affected units, and refusals. Pure. DESIGN.md "Change detection
//! rules" is the specification; the order of the checks below is the order of its rules.

use std::collections::{BTreeMap, BTreeSet};

use proto_types::{Change, ChangeKind, DependencyEdge};

use crate::paths::{file_name, owning_unit, parent};
use crate::settings::Settings;
use crate::snapshot::Snapshot;
use crate::units::UnitIndex;

/// What a commit range affects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Detection {
    /// One entry per kind that occurred, in [`ChangeKind`] order.
    pub changes: Vec<Change>,
    /// `unit` depends on `depends_on`, both affected; transitive through unaffected units.
    pub dependencies: Vec<DependencyEdge>,
    /// Why each unit is listed: (kind, unit, file that caused it), sorted.
    pub causes: Vec<Cause>,
    pub warnings: Vec<String>,
    /// Reasons the change must not run (a deleted unit that remaining units depend on).
    pub refusals: Vec<String>,
}

/// One reason a unit (or, for account changes, nothing) is affected.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cause {
    pub kind: ChangeKind,
    pub unit: Option<String>,
    pub file: String,
}

impl Detection {
    /// Every affected unit, sorted, each once.
    pub fn units(&self) -> BTreeSet<&str> {
        self.changes
            .iter()
            .flat_map(|c| c.units.iter().map(String::as_str))
            .collect()
    }
}

/// Which side of the diff a changed path exists on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Base,
    Head,
}

/// A path the diff touched, on the side(s) where it exists. A modification exists on both
/// sides, an addition only at head, a deletion only at base; a rename is a deletion plus an
/// addition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangedPath {
    pub path: String,
    pub sides: Vec<Side>,
}

impl ChangedPath {
    pub fn modified(path: &str) -> ChangedPath {
        ChangedPath {
            path: path.to_owned(),
            sides: vec![Side::Base, Side::Head],
        }
    }

    pub fn added(path: &str) -> ChangedPath {
        ChangedPath {
            path: path.to_owned(),
            sides: vec![Side::Head],
        }
    }

    pub fn deleted(path: &str) -> ChangedPath {
        ChangedPath {
            path: path.to_owned(),
            sides: vec![Side::Base],
        }
    }

    fn exists_at(&self, side: Side) -> bool {
        self.sides.contains(&side)
    }
}

/// One commit as classification sees it.
#[derive(Debug, Clone, Copy)]
pub struct Commit<'a> {
    pub snapshot: &'a Snapshot,
    pub units: &'a UnitIndex,
}

/// `_new-account-requests/*.yml` anywhere.
fn is_account_request(path: &str) -> bool {
    let name = file_name(path);
    file_name(parent(path)) == "_new-account-requests"
        && (name.ends_with(".yml") || name.ends_with(".yaml"))
}

/// The kind a change to a file read by other units gives them.
fn shared_file_kind(path: &str) -> ChangeKind {
    if path.ends_with(".hcl") {
        if path.split('/').any(|part| part == "_envcommon") {
            ChangeKind::EnvCommonChanged
        } else {
            ChangeKind::HclChanged
        }
    } else {
        ChangeKind::FileChanged
    }
}

/// Classifies the changes, then adds refusals and dependency edges. Expects the dependencies
/// of every evaluated unit to be resolved (as [`UnitIndex::build`] does).
pub fn classify(
    base: Commit<'_>,
    head: Commit<'_>,
    changed: &[ChangedPath],
    settings: &Settings,
) -> Detection {
    let mut detection = classify_changes(base, head, changed, settings);
    finish(&mut detection, base, head, settings);
    detection
}

/// The changes and their causes, without refusals or dependency edges (which need dependencies
/// resolved: see [`units_to_resolve`]) and warnings (added by [`finish`]).
pub(crate) fn classify_changes(
    base: Commit<'_>,
    head: Commit<'_>,
    changed: &[ChangedPath],
    settings: &Settings,
) -> Detection {
    let mut causes: BTreeSet<Cause> = BTreeSet::new();
    let mut add = |kind: ChangeKind, unit: Option<&str>, file: &str| {
        causes.insert(Cause {
            kind,
            unit: unit.map(str::to_owned),
            file: file.to_owned(),
        });
    };

    for change in changed {
        let path = change.path.as_str();
        if settings.ignores(path) {
            continue;
        }
        if is_account_request(path) {
            add(ChangeKind::AccountsRequested, None, path);
            continue;
        }
        if path == "accounts.yml" {
            add(ChangeKind::AccountsChanged, None, path);
            continue;
        }

        // The units whose directory holds the file, on each side where it exists.
        let mut owners: BTreeSet<&str> = BTreeSet::new();
        for (side, commit) in [(Side::Base, base), (Side::Head, head)] {
            if change.exists_at(side) {
                owners.extend(owning_unit(path, |dir| commit.units.contains(dir)));
            }
        }
        if file_name(path) == ".drift-history.json" && !owners.is_empty() {
            for owner in &owners {
                add(ChangeKind::DriftDetected, Some(owner), path);
            }
            continue;
        }
        for owner in &owners {
            let kind = match (base.units.contains(owner), head.units.contains(owner)) {
                (true, true) => ChangeKind::UnitChanged,
                (false, true) => ChangeKind::UnitAdded,
                _ => ChangeKind::UnitDeleted,
            };
            add(kind, Some(owner), path);
        }

        // Units that read the file, judged where it exists: at head, or at base if deleted.
        let judge = if change.exists_at(Side::Head) {
            head
        } else {
            base
        };
        let kind = shared_file_kind(path);
        for reader in judge.units.readers_of(path) {
            if !owners.contains(reader) {
                add(kind, Some(reader), path);
            }
        }
        if owners.is_empty() {
            // The conservative answers: a file we cannot understand affects every unit under
            // its directory, and a unit whose reads are not all known may read anything.
            if judge.units.has_problem(path) {
                let dir = parent(path);
                for unit in judge
                    .units
                    .units
                    .keys()
                    .filter(|unit| dir.is_empty() || unit.starts_with(&format!("{dir}/")))
                {
                    add(kind, Some(unit), path);
                }
            }
            for unit in judge.units.uncertain_units() {
                add(kind, Some(&unit.path), path);
            }
        }
    }

    let causes: Vec<Cause> = causes.into_iter().collect();
    let mut grouped: BTreeMap<ChangeKind, (BTreeSet<String>, BTreeSet<String>)> = BTreeMap::new();
    for cause in &causes {
        let (units, files) = grouped.entry(cause.kind).or_default();
        units.extend(cause.unit.clone());
        files.insert(cause.file.clone());
    }
    let changes: Vec<Change> = grouped
        .into_iter()
        .map(|(kind, (units, files))| Change {
            kind,
            units: units.into_iter().collect(),
            files: files.into_iter().collect(),
        })
        .collect();

    Detection {
        changes,
        causes,
        ..Detection::default()
    }
}

/// Whether the change deletes units: refusing it needs every remaining unit's dependencies.
pub(crate) fn deletes_units(detection: &Detection) -> bool {
    detection
        .changes
        .iter()
        .any(|change| change.kind == ChangeKind::UnitDeleted)
}

/// Units whose dependencies the edges need but that are not resolved yet: the affected units,
/// and the units reached from them through resolved dependencies, as (at base, at head). Call
/// until both are empty.
pub(crate) fn units_to_resolve(
    detection: &Detection,
    base: &UnitIndex,
    head: &UnitIndex,
) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut wanted = (BTreeSet::new(), BTreeSet::new());
    let mut seen = (BTreeSet::new(), BTreeSet::new());
    let mut stack: Vec<(&str, bool)> = detection
        .units()
        .into_iter()
        .map(|unit| (unit, head.contains(unit)))
        .collect();
    while let Some((unit, at_head)) = stack.pop() {
        let (index, seen, wanted) = if at_head {
            (head, &mut seen.1, &mut wanted.1)
        } else {
            (base, &mut seen.0, &mut wanted.0)
        };
        if !seen.insert(unit) {
            continue;
        }
        let Some(found) = index.units.get(unit) else {
            continue;
        };
        if !found.dependencies_resolved() {
            if found.is_evaluated() {
                wanted.insert(unit.to_owned());
            }
            continue;
        }
        stack.extend(
            found
                .dependencies
                .iter()
                .map(|dependency| (dependency.as_str(), at_head)),
        );
    }
    wanted
}

/// Adds refusals (deleted units still depended on), the dependency edges among affected units,
/// and the warnings of everything evaluated, now that evaluation is complete.
pub(crate) fn finish(
    detection: &mut Detection,
    base: Commit<'_>,
    head: Commit<'_>,
    settings: &Settings,
) {
    let deleted: BTreeSet<&str> = detection
        .causes
        .iter()
        .filter(|c| c.kind == ChangeKind::UnitDeleted)
        .filter_map(|c| c.unit.as_deref())
        .collect();
    let mut refusals = Vec::new();
    for unit in &deleted {
        for dependent in head.units.dependents_of_missing(unit) {
            refusals.push(format!(
                "{unit} is deleted, but {dependent} still depends on it"
            ));
        }
    }
    detection.refusals = refusals;
    detection.dependencies = affected_edges(&detection.units(), base.units, head.units);

    let mut warnings: BTreeSet<String> = head.units.warnings().into_iter().collect();
    // Base problems matter only where the base was judged: deleted units and files.
    for warning in base.units.warnings() {
        let file = warning.split(':').next().unwrap_or_default();
        if !head.snapshot.exists(file) {
            warnings.insert(warning);
        }
    }
    warnings.extend(settings.issues.iter().map(ToString::to_string));
    detection.warnings = warnings.into_iter().collect();
}

/// Edges among affected units. A unit's dependencies are read where it exists: at head, or at
/// base for a deleted unit. Paths through unaffected units count, because order still matters
/// when the unit in the middle is not re-run.
fn affected_edges(
    affected: &BTreeSet<&str>,
    base: &UnitIndex,
    head: &UnitIndex,
) -> Vec<DependencyEdge> {
    let mut edges = BTreeSet::new();
    for &unit in affected {
        let index = if head.contains(unit) { head } else { base };
        let mut stack: Vec<&str> = index
            .dependencies_of(unit)
            .iter()
            .map(String::as_str)
            .collect();
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        while let Some(next) = stack.pop() {
            if next == unit || !seen.insert(next) {
                continue;
            }
            if affected.contains(next) {
                edges.insert(DependencyEdge {
                    unit: unit.to_owned(),
                    depends_on: next.to_owned(),
                });
            } else {
                stack.extend(index.dependencies_of(next).iter().map(String::as_str));
            }
        }
    }
    edges.into_iter().collect()
}
