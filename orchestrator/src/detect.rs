//! Classification: from the units at both commits and the changed paths to the changes and
//! the dependency edges among affected units. Pure.

use std::collections::{BTreeMap, BTreeSet};

use proto_types::{Change, ChangeKind, DependencyEdge};

use crate::paths::owning_unit;
use crate::units::UnitIndex;

/// What a commit range affects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Detection {
    /// One entry per kind that occurred, in [`ChangeKind`] order.
    pub changes: Vec<Change>,
    /// `unit` depends on `depends_on`, both affected; transitive through unaffected units.
    pub dependencies: Vec<DependencyEdge>,
    pub warnings: Vec<String>,
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
}

pub fn classify(base: &UnitIndex, head: &UnitIndex, changed: &[ChangedPath]) -> Detection {
    // unit → files that touched it.
    let mut touched: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for change in changed {
        for side in &change.sides {
            let index = match side {
                Side::Base => base,
                Side::Head => head,
            };
            if let Some(unit) = owning_unit(&change.path, |dir| index.contains(dir)) {
                touched.entry(unit).or_default().insert(&change.path);
            }
        }
    }

    let mut by_kind: BTreeMap<ChangeKind, (BTreeSet<String>, BTreeSet<String>)> = BTreeMap::new();
    for (unit, files) in &touched {
        let kind = match (base.contains(unit), head.contains(unit)) {
            (true, true) => ChangeKind::UnitChanged,
            (false, true) => ChangeKind::UnitAdded,
            (true, false) => ChangeKind::UnitDeleted,
            (false, false) => continue,
        };
        let (units, kind_files) = by_kind.entry(kind).or_default();
        units.insert((*unit).to_owned());
        kind_files.extend(files.iter().map(|f| (*f).to_owned()));
    }
    let changes: Vec<Change> = by_kind
        .into_iter()
        .map(|(kind, (units, files))| Change {
            kind,
            units: units.into_iter().collect(),
            files: files.into_iter().collect(),
        })
        .collect();

    let mut warnings = base.warnings.clone();
    warnings.extend(head.warnings.iter().cloned());
    warnings.sort();
    warnings.dedup();

    let mut detection = Detection {
        changes,
        dependencies: Vec::new(),
        warnings,
    };
    detection.dependencies = affected_edges(&detection.units(), base, head);
    detection
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::Snapshot;
    use crate::units::discover;

    const BACKEND: &str = "terraform {\n  backend \"local\" {}\n}\n";

    fn plain(deps: &[&str]) -> String {
        let list: Vec<String> = deps.iter().map(|d| format!("\"../{d}\"")).collect();
        format!("dependencies = [{}]\n", list.join(", "))
    }

    fn check(base: &[(&str, &str)], head: &[(&str, &str)], changed: &[ChangedPath]) -> Detection {
        let base = discover(&Snapshot::from_files(base.iter().copied()));
        let head = discover(&Snapshot::from_files(head.iter().copied()));
        classify(&base, &head, changed)
    }

    fn summary(detection: &Detection) -> Vec<(ChangeKind, Vec<&str>, Vec<&str>)> {
        detection
            .changes
            .iter()
            .map(|c| {
                (
                    c.kind,
                    c.units.iter().map(String::as_str).collect(),
                    c.files.iter().map(String::as_str).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn added_changed_and_deleted_units_with_the_files_that_caused_them() {
        let base = [
            ("a/main.tf", BACKEND),
            ("b/main.tf", BACKEND),
            ("b/vars.tf", ""),
            ("README.md", ""),
        ];
        let head = [
            ("a/main.tf", BACKEND),
            ("c/main.tf", BACKEND),
            ("a/extra.tf", ""),
            ("README.md", "x"),
        ];
        let changed = [
            ChangedPath::added("a/extra.tf"),
            ChangedPath::deleted("b/main.tf"),
            ChangedPath::deleted("b/vars.tf"),
            ChangedPath::added("c/main.tf"),
            ChangedPath::modified("README.md"),
        ];
        assert_eq!(
            summary(&check(&base, &head, &changed)),
            [
                (ChangeKind::UnitAdded, vec!["c"], vec!["c/main.tf"]),
                (ChangeKind::UnitChanged, vec!["a"], vec!["a/extra.tf"]),
                (
                    ChangeKind::UnitDeleted,
                    vec!["b"],
                    vec!["b/main.tf", "b/vars.tf"]
                ),
            ]
        );
    }

    #[test]
    fn a_rename_across_units_changes_both() {
        let base = [
            ("a/main.tf", BACKEND),
            ("a/x.tf", ""),
            ("b/main.tf", BACKEND),
        ];
        let head = [
            ("a/main.tf", BACKEND),
            ("b/main.tf", BACKEND),
            ("b/x.tf", ""),
        ];
        let changed = [ChangedPath::deleted("a/x.tf"), ChangedPath::added("b/x.tf")];
        assert_eq!(
            summary(&check(&base, &head, &changed)),
            [(
                ChangeKind::UnitChanged,
                vec!["a", "b"],
                vec!["a/x.tf", "b/x.tf"]
            )]
        );
    }

    #[test]
    fn a_file_in_a_nested_unit_belongs_to_the_nested_unit_only() {
        let files = [
            ("a/main.tf", BACKEND),
            ("a/inner/main.tf", BACKEND),
            ("a/inner/x.tf", ""),
        ];
        let changed = [ChangedPath::modified("a/inner/x.tf")];
        assert_eq!(
            summary(&check(&files, &files, &changed)),
            [(
                ChangeKind::UnitChanged,
                vec!["a/inner"],
                vec!["a/inner/x.tf"]
            )]
        );
    }

    #[test]
    fn edges_connect_affected_units_through_unaffected_ones() {
        // a → b → c → d, with a, c and d changed: a depends on c (through b), c on d.
        let files = [
            ("a/pipelines.hcl", plain(&["b"])),
            ("b/pipelines.hcl", plain(&["c"])),
            ("c/pipelines.hcl", plain(&["d"])),
            ("d/pipelines.hcl", plain(&[])),
            ("a/main.tf", String::new()),
            ("c/main.tf", String::new()),
            ("d/main.tf", String::new()),
        ];
        let files: Vec<(&str, &str)> = files.iter().map(|(p, t)| (*p, t.as_str())).collect();
        let changed = [
            ChangedPath::modified("a/main.tf"),
            ChangedPath::modified("c/main.tf"),
            ChangedPath::modified("d/main.tf"),
        ];
        let detection = check(&files, &files, &changed);
        let edges: Vec<(&str, &str)> = detection
            .dependencies
            .iter()
            .map(|e| (e.unit.as_str(), e.depends_on.as_str()))
            .collect();
        assert_eq!(edges, [("a", "c"), ("c", "d")]);
    }

    #[test]
    fn a_deleted_units_dependencies_are_read_at_base() {
        let base_files = [
            ("app/pipelines.hcl", plain(&["db"])),
            ("db/pipelines.hcl", plain(&[])),
        ];
        let base: Vec<(&str, &str)> = base_files.iter().map(|(p, t)| (*p, t.as_str())).collect();
        let head_files = [
            ("db/pipelines.hcl", plain(&[])),
            ("db/main.tf", String::new()),
        ];
        let head: Vec<(&str, &str)> = head_files.iter().map(|(p, t)| (*p, t.as_str())).collect();
        let changed = [
            ChangedPath::deleted("app/pipelines.hcl"),
            ChangedPath::added("db/main.tf"),
        ];
        let detection = check(&base, &head, &changed);
        assert_eq!(
            detection.dependencies,
            [DependencyEdge {
                unit: "app".into(),
                depends_on: "db".into()
            }]
        );
    }

    #[test]
    fn dependency_cycles_terminate() {
        let files = [
            ("a/pipelines.hcl", plain(&["b"])),
            ("b/pipelines.hcl", plain(&["a"])),
        ];
        let files: Vec<(&str, &str)> = files.iter().map(|(p, t)| (*p, t.as_str())).collect();
        let detection = check(&files, &files, &[ChangedPath::modified("a/pipelines.hcl")]);
        assert!(detection.dependencies.is_empty());
    }
}
