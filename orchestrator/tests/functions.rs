//! Every function the static evaluator knows, one table row each: a small repository, a unit,
//! and exactly the files that unit reads.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: fail loudly.

use std::collections::BTreeSet;

use orchestrator::snapshot::Snapshot;
use orchestrator::units::UnitIndex;

/// (what the row checks, files, unit, the files it must read besides its own terragrunt.hcl)
type Row = (
    &'static str,
    Vec<(&'static str, &'static str)>,
    &'static str,
    Vec<&'static str>,
);

fn rows() -> Vec<Row> {
    const UNIT: &str = "live/prod/app";
    vec![
        (
            "find_in_parent_folders() without a name finds the nearest terragrunt.hcl above",
            vec![
                ("terragrunt.hcl", ""),
                ("live/terragrunt.hcl", ""),
                (
                    "live/prod/app/terragrunt.hcl",
                    "include { path = find_in_parent_folders() }",
                ),
            ],
            UNIT,
            vec!["live/terragrunt.hcl"],
        ),
        (
            "find_in_parent_folders(name) finds the nearest file of that name",
            vec![
                ("root.hcl", ""),
                ("live/root.hcl", ""),
                (
                    "live/prod/app/terragrunt.hcl",
                    "include \"root\" { path = find_in_parent_folders(\"root.hcl\") }",
                ),
            ],
            UNIT,
            vec!["live/root.hcl"],
        ),
        (
            "find_in_parent_folders(name, fallback) uses the fallback when nothing is found",
            vec![
                (
                    "live/prod/app/terragrunt.hcl",
                    "locals { x = read_terragrunt_config(find_in_parent_folders(\"none.hcl\", \"${get_repo_root()}/default.hcl\")) }",
                ),
                ("default.hcl", ""),
            ],
            UNIT,
            vec!["default.hcl"],
        ),
        (
            "get_terragrunt_dir() and get_original_terragrunt_dir() are the unit's directory",
            vec![(
                "live/prod/app/terragrunt.hcl",
                "inputs = { a = file(\"${get_terragrunt_dir()}/../shared.json\"), b = file(\"${get_original_terragrunt_dir()}/local.json\") }",
            )],
            UNIT,
            vec!["live/prod/shared.json", "live/prod/app/local.json"],
        ),
        (
            "get_parent_terragrunt_dir() is the included file's directory, in the child and in the parent",
            vec![
                (
                    "live/root.hcl",
                    "inputs = { common = file(\"${get_parent_terragrunt_dir()}/common.yaml\") }",
                ),
                (
                    "live/prod/app/terragrunt.hcl",
                    "include \"root\" { path = find_in_parent_folders(\"root.hcl\") }\ninputs = { x = file(\"${get_parent_terragrunt_dir(\"root\")}/child.yaml\") }",
                ),
            ],
            UNIT,
            vec!["live/root.hcl", "live/common.yaml", "live/child.yaml"],
        ),
        (
            "get_repo_root(), get_path_to_repo_root() and get_path_from_repo_root()",
            vec![(
                "live/prod/app/terragrunt.hcl",
                "inputs = {\n  a = file(\"${get_repo_root()}/data/a.json\")\n  b = file(\"${get_path_to_repo_root()}/data/b.json\")\n  c = file(\"${get_repo_root()}/vars/${get_path_from_repo_root()}.json\")\n}",
            )],
            UNIT,
            vec!["data/a.json", "data/b.json", "vars/live/prod/app.json"],
        ),
        (
            "dirname() and basename()",
            vec![
                ("live/root.hcl", ""),
                (
                    "live/prod/app/terragrunt.hcl",
                    "inputs = {\n  a = file(\"${dirname(find_in_parent_folders(\"root.hcl\"))}/a.json\")\n  b = file(\"${get_repo_root()}/by-name/${basename(get_terragrunt_dir())}.json\")\n}",
                ),
            ],
            UNIT,
            vec!["live/a.json", "by-name/app.json"],
        ),
        (
            "path_relative_to_include() and path_relative_from_include() in the included file",
            vec![
                (
                    "live/root.hcl",
                    "inputs = {\n  a = file(\"${get_parent_terragrunt_dir()}/vars/${path_relative_to_include()}.json\")\n  b = file(\"${path_relative_from_include()}/from.json\")\n}",
                ),
                (
                    "live/prod/app/terragrunt.hcl",
                    "include \"root\" { path = find_in_parent_folders(\"root.hcl\") }",
                ),
            ],
            UNIT,
            vec!["live/root.hcl", "live/vars/prod/app.json", "live/from.json"],
        ),
        (
            "read_terragrunt_config() reads the file and what it reads, evaluated in its own directory",
            vec![
                (
                    "live/env.hcl",
                    "locals {\n  region = read_terragrunt_config(find_in_parent_folders(\"region.hcl\"))\n  env = \"prod\"\n}",
                ),
                ("region.hcl", "locals { region = \"us-east-1\" }"),
                (
                    "live/prod/app/terragrunt.hcl",
                    "locals { env = read_terragrunt_config(find_in_parent_folders(\"env.hcl\")) }\ninputs = { x = file(\"${get_repo_root()}/data/${local.env.locals.env}.json\") }",
                ),
            ],
            UNIT,
            vec!["live/env.hcl", "region.hcl", "data/prod.json"],
        ),
        (
            "read_terragrunt_config(path, default) of a missing file reads nothing (once it exists, it is read)",
            vec![(
                "live/prod/app/terragrunt.hcl",
                "locals { x = read_terragrunt_config(\"${get_terragrunt_dir()}/missing.hcl\", { locals = {} }) }",
            )],
            UNIT,
            vec![],
        ),
        (
            "file(), templatefile(), fileexists(), mark_as_read() and sops_decrypt_file()",
            vec![(
                "live/prod/app/terragrunt.hcl",
                "inputs = {\n  a = file(\"a.txt\")\n  b = templatefile(\"b.tpl\", {})\n  c = fileexists(\"c.txt\")\n  d = mark_as_read(\"${get_repo_root()}/d.txt\")\n  e = sops_decrypt_file(\"e.enc.json\")\n}",
            )],
            UNIT,
            vec![
                "live/prod/app/a.txt",
                "live/prod/app/b.tpl",
                "live/prod/app/c.txt",
                "d.txt",
                "live/prod/app/e.enc.json",
            ],
        ),
        (
            "fileset() reads every matching file",
            vec![
                ("policies/a.json", ""),
                ("policies/b.json", ""),
                ("policies/c.yaml", ""),
                (
                    "live/prod/app/terragrunt.hcl",
                    "inputs = { p = fileset(\"${get_repo_root()}/policies\", \"*.json\") }",
                ),
            ],
            UNIT,
            vec!["policies/a.json", "policies/b.json"],
        ),
        (
            "a local terraform source with // reads the module and its local modules, recursively",
            vec![
                (
                    "modules/app/main.tf",
                    "module \"lib\" { source = \"../lib\" }",
                ),
                (
                    "modules/lib/main.tf",
                    "output \"x\" { value = file(\"${path.module}/lib.txt\") }",
                ),
                ("modules/lib/lib.txt", "x"),
                ("modules/other/main.tf", ""),
                (
                    "live/prod/app/terragrunt.hcl",
                    "terraform { source = \"${get_repo_root()}/modules//app\" }",
                ),
            ],
            UNIT,
            vec![
                "modules/app/main.tf",
                "modules/lib/main.tf",
                "modules/lib/lib.txt",
            ],
        ),
        (
            "a remote terraform source reads nothing in the repository",
            vec![(
                "live/prod/app/terragrunt.hcl",
                "terraform { source = \"git::https://github.com/acme/modules.git//app?ref=v1\" }",
            )],
            UNIT,
            vec![],
        ),
        (
            "string functions build paths: format, join, replace, lower, trimsuffix",
            vec![(
                "live/prod/app/terragrunt.hcl",
                "inputs = {\n  a = file(format(\"%s/%s.json\", get_repo_root(), \"fmt\"))\n  b = file(join(\"/\", [get_repo_root(), \"joined.json\"]))\n  c = file(replace(\"${get_repo_root()}/X.json\", \"X\", \"replaced\"))\n  d = file(lower(\"${get_repo_root()}/LOWER.json\"))\n  e = file(trimsuffix(\"${get_repo_root()}/trim.json.bak\", \".bak\"))\n}",
            )],
            UNIT,
            vec![
                "fmt.json",
                "joined.json",
                "replaced.json",
                "lower.json",
                "trim.json",
            ],
        ),
        (
            "for expressions, conditionals and locals referring to locals",
            vec![(
                "live/prod/app/terragrunt.hcl",
                "locals {\n  names = [\"a\", \"b\"]\n  dir = \"${get_repo_root()}/cfg\"\n  paths = [for n in local.names : \"${local.dir}/${n}.json\"]\n}\ninputs = {\n  all = [for p in local.paths : file(p)]\n  pick = file(true ? \"${local.dir}/yes.json\" : \"${local.dir}/no.json\")\n}",
            )],
            UNIT,
            vec!["cfg/a.json", "cfg/b.json", "cfg/yes.json"],
        ),
        (
            "nested include chains, each evaluated from the unit",
            vec![
                (
                    "live/root.hcl",
                    "include \"base\" { path = \"${get_repo_root()}/_envcommon/base.hcl\" }",
                ),
                (
                    "_envcommon/base.hcl",
                    "locals { env = read_terragrunt_config(find_in_parent_folders(\"env.hcl\")) }",
                ),
                ("live/prod/env.hcl", ""),
                (
                    "live/prod/app/terragrunt.hcl",
                    "include \"root\" { path = find_in_parent_folders(\"root.hcl\") }",
                ),
            ],
            UNIT,
            vec!["live/root.hcl", "_envcommon/base.hcl", "live/prod/env.hcl"],
        ),
    ]
}

#[test]
fn each_function_resolves_to_exactly_the_files_it_reads() {
    for (what, mut files, unit, expected) in rows() {
        // Every file a row expects to be read exists: reads of missing files are not recorded.
        for path in &expected {
            if !files.iter().any(|(file, _)| file == path) {
                files.push((path, ""));
            }
        }
        let snapshot = Snapshot::from_files(files.iter().copied());
        let index = UnitIndex::build(&snapshot);
        assert!(index.contains(unit), "{what}: {unit} is not a unit");
        let found: BTreeSet<String> = index
            .reads_of(unit)
            .into_iter()
            .map(str::to_owned)
            .collect();
        let mut expected: BTreeSet<String> = expected.into_iter().map(str::to_owned).collect();
        expected.insert(format!("{unit}/terragrunt.hcl"));
        assert_eq!(found, expected, "{what}; warnings: {:?}", index.warnings());
        assert!(
            index.warnings().is_empty() || what.contains("default"),
            "{what}: unexpected warnings {:?}",
            index.warnings()
        );
    }
}

#[test]
fn an_unknown_function_in_a_read_position_is_a_warning_with_file_and_line() {
    let snapshot = Snapshot::from_files([(
        "live/app/terragrunt.hcl",
        "locals {\n  x = 1\n}\ninclude \"root\" {\n  path = get_env(\"ROOT\")\n}\ninputs = { y = file(nonsense(\"z\")) }",
    )]);
    let index = UnitIndex::build(&snapshot);
    let warnings = index.warnings().join("\n");
    assert!(warnings.contains("live/app/terragrunt.hcl:5: cannot resolve the include path: get_env() is only known at run time"), "{warnings}");
    assert!(warnings.contains("live/app/terragrunt.hcl:7: cannot resolve the path file() reads: unknown function nonsense()"), "{warnings}");
    assert!(index.units["live/app"].uncertain);
}
