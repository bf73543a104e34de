//! Property: on random repositories, the reverse index and the dependencies (built on every
//! core, with memos shared between units) equal a brute-force answer that evaluates each unit
//! alone, from scratch.
//!
//! The generated configurations exercise what the memos depend on: includes found with
//! `find_in_parent_folders` (shared by a directory), included files that read relative to the
//! unit (`get_terragrunt_dir`, never shared), relative include paths, dependency blocks in
//! included files, `read_terragrunt_config`, local modules and file reads.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::{Dependencies, UnitIndex, evaluate_unit};
use crate::hcl::{Eval, ParseCache};
use crate::snapshot::Snapshot;

/// Choices that describe a repository; indices are taken modulo what exists.
#[derive(Debug, Clone)]
struct Shape {
    commons: Vec<CommonShape>,
    modules: Vec<(Option<usize>, bool)>,
    data_files: usize,
    envs: Vec<EnvShape>,
    units: Vec<UnitShape>,
    plain_units: Vec<(Option<usize>, Option<usize>)>,
}

#[derive(Debug, Clone)]
struct CommonShape {
    reads_common: Option<usize>,
    includes_common: Option<usize>,
    reads_data: Option<usize>,
    source_module: Option<usize>,
    reads_env: bool,
    reads_next_to_unit: bool,
    depends_on_sibling: Option<usize>,
}

#[derive(Debug, Clone)]
struct EnvShape {
    reads_common: Option<usize>,
    /// An `env.hcl`-like file named `shared.hcl` that units find with `find_in_parent_folders`.
    has_shared: bool,
    nested: bool,
}

#[derive(Debug, Clone)]
struct UnitShape {
    env: usize,
    /// 0: none, 1: a common by absolute path, 2: the env's shared.hcl found from the unit,
    /// 3: a common by a relative path.
    include: (u8, usize),
    reads_env: bool,
    reads_data: Option<usize>,
    source_module: Option<usize>,
    depends_on: Option<usize>,
    has_local_file: bool,
}

fn option_index() -> impl Strategy<Value = Option<usize>> {
    proptest::option::of(0..8_usize)
}

fn shape() -> impl Strategy<Value = Shape> {
    let common = (
        option_index(),
        option_index(),
        option_index(),
        option_index(),
        any::<bool>(),
        any::<bool>(),
        option_index(),
    )
        .prop_map(
            |(
                reads_common,
                includes_common,
                reads_data,
                source_module,
                reads_env,
                reads_next_to_unit,
                depends_on_sibling,
            )| CommonShape {
                reads_common,
                includes_common,
                reads_data,
                source_module,
                reads_env,
                reads_next_to_unit,
                depends_on_sibling,
            },
        );
    let env = (option_index(), any::<bool>(), any::<bool>()).prop_map(
        |(reads_common, has_shared, nested)| EnvShape {
            reads_common,
            has_shared,
            nested,
        },
    );
    let unit = (
        0..4_usize,
        (0..4_u8, 0..8_usize),
        any::<bool>(),
        option_index(),
        option_index(),
        option_index(),
        any::<bool>(),
    )
        .prop_map(
            |(env, include, reads_env, reads_data, source_module, depends_on, has_local_file)| {
                UnitShape {
                    env,
                    include,
                    reads_env,
                    reads_data,
                    source_module,
                    depends_on,
                    has_local_file,
                }
            },
        );
    (
        proptest::collection::vec(common, 1..5),
        proptest::collection::vec((option_index(), any::<bool>()), 1..5),
        1..4_usize,
        proptest::collection::vec(env, 1..4),
        proptest::collection::vec(unit, 1..14),
        proptest::collection::vec((option_index(), option_index()), 0..3),
    )
        .prop_map(
            |(commons, modules, data_files, envs, units, plain_units)| Shape {
                commons,
                modules,
                data_files,
                envs,
                units,
                plain_units,
            },
        )
}

/// Renders the shape as files. References to other commons and modules only point "down" (to
/// lower indices), as real configurations do: Terragrunt and Terraform reject cycles.
fn render(shape: &Shape) -> Vec<(String, String)> {
    let mut files = Vec::new();
    for d in 0..shape.data_files {
        files.push((format!("data/d{d}.json"), "{}".to_owned()));
    }
    files.push(("common/base.hcl".to_owned(), "locals {}\n".to_owned()));
    let data = |i: usize| format!("${{get_repo_root()}}/data/d{}.json", i % shape.data_files);
    for (k, (sources, reads_file)) in shape.modules.iter().enumerate() {
        let mut text = String::new();
        if let Some(j) = sources.filter(|_| k > 0) {
            text.push_str(&format!(
                "module \"m\" {{\n  source = \"../m{}\"\n}}\n",
                j % k
            ));
        }
        if *reads_file {
            text.push_str("locals {\n  x = file(\"${path.module}/f.txt\")\n}\n");
            files.push((format!("modules/m{k}/f.txt"), "x".to_owned()));
        }
        files.push((format!("modules/m{k}/main.tf"), text));
    }
    let module = |i: usize| i % shape.modules.len();
    let unit_dir = |n: usize| {
        let n = n % shape.units.len();
        let env_index = shape.units[n].env % shape.envs.len();
        let nested = if shape.envs[env_index].nested && n % 2 == 1 {
            "/sub"
        } else {
            ""
        };
        format!("env{env_index}{nested}/u{n}")
    };
    for (i, common) in shape.commons.iter().enumerate() {
        let mut text = String::new();
        if let Some(j) = common.includes_common.filter(|_| i > 0) {
            text.push_str(&format!(
                "include \"inner\" {{\n  path = \"${{get_repo_root()}}/common/c{}.hcl\"\n}}\n",
                j % i
            ));
        }
        let mut locals = Vec::new();
        if let Some(j) = common.reads_common.filter(|_| i > 0) {
            locals.push(format!(
                "other = read_terragrunt_config(\"${{get_repo_root()}}/common/c{}.hcl\")",
                j % i
            ));
        }
        if common.reads_env {
            locals.push("env = read_terragrunt_config(find_in_parent_folders(\"env.hcl\", \"${get_repo_root()}/common/base.hcl\"))".to_owned());
        }
        if !locals.is_empty() {
            text.push_str(&format!("locals {{\n  {}\n}}\n", locals.join("\n  ")));
        }
        let mut inputs = Vec::new();
        if let Some(d) = common.reads_data {
            inputs.push(format!("d = file(\"{}\")", data(d)));
        }
        if common.reads_next_to_unit {
            inputs.push("l = fileexists(\"${get_terragrunt_dir()}/local.json\")".to_owned());
        }
        if !inputs.is_empty() {
            text.push_str(&format!("inputs = {{\n  {}\n}}\n", inputs.join("\n  ")));
        }
        if let Some(m) = common.source_module {
            text.push_str(&format!(
                "terraform {{\n  source = \"${{get_repo_root()}}/modules//m{}\"\n}}\n",
                module(m)
            ));
        }
        if let Some(s) = common.depends_on_sibling {
            text.push_str(&format!("dependency \"sibling\" {{\n  config_path = \"${{get_terragrunt_dir()}}/../u{}\"\n}}\n", s % shape.units.len()));
        }
        files.push((format!("common/c{i}.hcl"), text));
    }
    let common_path = |c: usize| format!("common/c{}.hcl", c % shape.commons.len());
    for (e, env) in shape.envs.iter().enumerate() {
        let text = match env.reads_common {
            Some(c) => format!(
                "locals {{\n  c = read_terragrunt_config(\"${{get_repo_root()}}/{}\")\n}}\n",
                common_path(c)
            ),
            None => "locals {}\n".to_owned(),
        };
        files.push((format!("env{e}/env.hcl"), text));
        if env.has_shared {
            files.push((
                format!("env{e}/shared.hcl"),
                format!(
                    "include \"c\" {{\n  path = \"${{get_repo_root()}}/{}\"\n}}\n",
                    common_path(e)
                ),
            ));
        }
    }
    for (n, unit) in shape.units.iter().enumerate() {
        let dir = unit_dir(n);
        let mut text = String::new();
        let depth = dir.matches('/').count() + 1;
        match unit.include {
            (1, c) => text.push_str(&format!("include \"root\" {{\n  path = \"${{get_repo_root()}}/{}\"\n}}\n", common_path(c))),
            (2, _) => text.push_str("include \"shared\" {\n  path = find_in_parent_folders(\"shared.hcl\", \"${get_repo_root()}/common/c0.hcl\")\n}\n"),
            (3, c) => text.push_str(&format!("include \"relative\" {{\n  path = \"{}{}\"\n}}\n", "../".repeat(depth), common_path(c))),
            _ => {}
        }
        if unit.reads_env {
            text.push_str("locals {\n  env = read_terragrunt_config(find_in_parent_folders(\"env.hcl\"))\n}\n");
        }
        if let Some(d) = unit.reads_data {
            text.push_str(&format!("inputs = {{\n  d = file(\"{}\")\n}}\n", data(d)));
        }
        if let Some(m) = unit.source_module {
            text.push_str(&format!(
                "terraform {{\n  source = \"${{get_repo_root()}}/modules//m{}\"\n}}\n",
                module(m)
            ));
        }
        if let Some(dep) = unit.depends_on {
            text.push_str(&format!(
                "dependency \"d\" {{\n  config_path = \"${{get_repo_root()}}/{}\"\n}}\n",
                unit_dir(dep)
            ));
        }
        if unit.has_local_file {
            files.push((format!("{dir}/local.json"), "{}".to_owned()));
        }
        files.push((format!("{dir}/terragrunt.hcl"), text));
    }
    for (n, (m, d)) in shape.plain_units.iter().enumerate() {
        let mut text = "terraform {\n  backend \"local\" {}\n}\n".to_owned();
        if let Some(m) = m {
            text.push_str(&format!(
                "module \"m\" {{\n  source = \"../../modules/m{}\"\n}}\n",
                module(*m)
            ));
        }
        if let Some(d) = d {
            text.push_str(&format!(
                "locals {{\n  d = file(\"${{path.module}}/../../data/d{}.json\")\n}}\n",
                d % shape.data_files
            ));
        }
        files.push((format!("plain/p{n}/main.tf"), text));
    }
    files
}

/// file → readers and unit → dependencies, by evaluating every unit on its own, with fresh
/// memos each time.
fn brute_force(
    snapshot: &Snapshot,
    index: &UnitIndex,
) -> (
    BTreeMap<String, BTreeSet<String>>,
    BTreeMap<String, Vec<String>>,
) {
    let mut cache = ParseCache::default();
    cache.add_snapshot(snapshot);
    let mut readers: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut dependencies = BTreeMap::new();
    for unit in index.units.values() {
        let mut ev = Eval::new(snapshot, &cache);
        let (found, unit_dependencies) =
            evaluate_unit(&mut ev, &unit.path, unit.kind, unit.has_sources);
        for file in found.reads {
            readers
                .entry(snapshot.files[file as usize].clone())
                .or_default()
                .insert(unit.path.clone());
        }
        let targets = match unit_dependencies {
            Dependencies::Known(targets) => targets,
            Dependencies::Chain(chain) => {
                crate::terragrunt::unit_dependencies(&mut ev, &chain, &unit.path).0
            }
        };
        let known: Vec<String> = targets
            .into_iter()
            .filter(|t| *t != unit.path && index.contains(t))
            .collect();
        dependencies.insert(unit.path.clone(), known);
    }
    (readers, dependencies)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn the_index_equals_evaluating_each_unit_alone(shape in shape()) {
        let files = render(&shape);
        let snapshot = Snapshot::from_files(files.iter().map(|(p, t)| (p.as_str(), t.as_str())));
        let index = UnitIndex::build(&snapshot);
        let (readers, dependencies) = brute_force(&snapshot, &index);
        for file in snapshot.files.iter() {
            let actual: BTreeSet<String> = index.readers_of(file).into_iter().map(str::to_owned).collect();
            let wanted = readers.get(file).cloned().unwrap_or_default();
            prop_assert_eq!(actual, wanted, "readers of {}", file);
        }
        for (unit, wanted) in &dependencies {
            prop_assert_eq!(index.dependencies_of(unit), wanted.as_slice(), "dependencies of {}", unit);
        }
        // Generated repositories are fully resolvable: nothing is conservative here.
        prop_assert!(index.uncertain_units().next().is_none(), "{:?}", index.warnings());
    }
}
