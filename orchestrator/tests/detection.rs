//! Change detection on small git histories laid out as real teams write Terragrunt: a root
//! `root.hcl`, `_envcommon` includes found with `dirname(find_in_parent_folders(...))`, account,
//! region and env files, local modules, and shared data. Each case commits one change and asserts
//! the exact (kind, unit) set.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: fail loudly.

use std::collections::BTreeSet;
use std::path::Path;

use orchestrator::{DetectOutcome, DetectRequest, detect_changes};
use proto_types::{ChangeKind, EventKind};

/// A git repository built commit by commit with libgit2.
struct History {
    dir: tempfile::TempDir,
    repo: git2::Repository,
}

impl History {
    fn new(files: &[(&str, String)]) -> (History, String) {
        let dir = tempfile::tempdir().unwrap();
        let repo = git2::Repository::init(dir.path()).unwrap();
        let history = History { dir, repo };
        let changes: Vec<(&str, Option<String>)> =
            files.iter().map(|(p, t)| (*p, Some(t.clone()))).collect();
        let sha = history.commit(&changes);
        (history, sha)
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes (`Some`) or deletes (`None`) files, commits everything, returns the sha.
    fn commit(&self, changes: &[(&str, Option<String>)]) -> String {
        for (path, content) in changes {
            let full = self.dir.path().join(path);
            match content {
                Some(text) => {
                    std::fs::create_dir_all(full.parent().unwrap()).unwrap();
                    std::fs::write(&full, text).unwrap();
                }
                None => std::fs::remove_file(&full).unwrap(),
            }
        }
        let mut index = self.repo.index().unwrap();
        index
            .add_all(["*"], git2::IndexAddOption::DEFAULT, None)
            .unwrap();
        index.update_all(["*"], None).unwrap();
        index.write().unwrap();
        let tree = self.repo.find_tree(index.write_tree().unwrap()).unwrap();
        let signature = git2::Signature::now("Test", "test@example.com").unwrap();
        let parents: Vec<git2::Commit<'_>> = self
            .repo
            .head()
            .ok()
            .and_then(|h| h.peel_to_commit().ok())
            .into_iter()
            .collect();
        let parent_refs: Vec<&git2::Commit<'_>> = parents.iter().collect();
        self.repo
            .commit(
                Some("HEAD"),
                &signature,
                &signature,
                "change",
                &tree,
                &parent_refs,
            )
            .unwrap()
            .to_string()
    }

    fn detect(&self, base: Option<&str>, head: &str) -> DetectOutcome {
        detect_changes(DetectRequest {
            repo: self.path(),
            base,
            head,
            event: EventKind::Push,
        })
        .unwrap()
    }
}

fn unit_config(envcommon: &str, extra: &str) -> String {
    format!(
        "include \"root\" {{\n  path = find_in_parent_folders(\"root.hcl\")\n}}\n\n\
         include \"envcommon\" {{\n  path   = \"${{dirname(find_in_parent_folders(\"root.hcl\"))}}/_envcommon/{envcommon}.hcl\"\n  expose = true\n}}\n{extra}"
    )
}

const ROOT_HCL: &str = r#"locals {
  account_vars = read_terragrunt_config(find_in_parent_folders("account.hcl"))
  region_vars  = read_terragrunt_config(find_in_parent_folders("region.hcl"))
}

remote_state {
  backend = "local"
  config = {
    path = "${get_parent_terragrunt_dir()}/.state/${path_relative_to_include()}/terraform.tfstate"
  }
}

generate "provider" {
  path      = "provider.tf"
  if_exists = "overwrite"
  contents  = templatefile("${get_parent_terragrunt_dir()}/templates/provider.tf.tpl", { region = local.region_vars.locals.region })
}
"#;

const ENVCOMMON_APP: &str = r#"include "base" {
  path = "${dirname(find_in_parent_folders("root.hcl"))}/_envcommon/base.hcl"
}

locals {
  env_vars = read_terragrunt_config(find_in_parent_folders("env.hcl"))
  env      = local.env_vars.locals.env
}

terraform {
  source = "${dirname(find_in_parent_folders("root.hcl"))}/modules//app"
}

dependency "vpc" {
  config_path = "${get_terragrunt_dir()}/../vpc"
}

inputs = {
  settings = file("${get_repo_root()}/data/${local.env}.json")
}
"#;

const ENVCOMMON_VPC: &str = r#"terraform {
  source = "${get_path_to_repo_root()}/modules/vpc"
}
"#;

const APP_UNITS: [&str; 3] = [
    "acme/us-east-1/dev/app",
    "acme/us-east-1/prod/app",
    "acme/eu-west-1/prod/app",
];
const VPC_UNITS: [&str; 3] = [
    "acme/us-east-1/dev/vpc",
    "acme/us-east-1/prod/vpc",
    "acme/eu-west-1/prod/vpc",
];

fn layout() -> Vec<(&'static str, String)> {
    let mut files: Vec<(&'static str, String)> = vec![
        ("README.md", "# live\n".into()),
        (".pipelines.hcl", "ignore_list = [\"**/*.md\"]\n".into()),
        ("root.hcl", ROOT_HCL.into()),
        ("templates/provider.tf.tpl", "provider \"aws\" { region = \"${region}\" }\n".into()),
        ("_envcommon/base.hcl", "locals { owner = \"platform\" }\n".into()),
        ("_envcommon/app.hcl", ENVCOMMON_APP.into()),
        ("_envcommon/vpc.hcl", ENVCOMMON_VPC.into()),
        ("modules/app/main.tf", "module \"lib\" {\n  source = \"../lib\"\n}\n".into()),
        ("modules/lib/main.tf", "output \"x\" {\n  value = file(\"${path.module}/lib.txt\")\n}\n".into()),
        ("modules/lib/lib.txt", "lib\n".into()),
        ("modules/vpc/main.tf", "variable \"cidr\" {}\n".into()),
        ("data/dev.json", "{}\n".into()),
        ("data/prod.json", "{}\n".into()),
        ("acme/account.hcl", "locals { account_name = \"acme\" }\n".into()),
        ("acme/us-east-1/region.hcl", "locals { region = \"us-east-1\" }\n".into()),
        ("acme/eu-west-1/region.hcl", "locals { region = \"eu-west-1\" }\n".into()),
        ("acme/us-east-1/dev/env.hcl", "locals { env = \"dev\" }\n".into()),
        ("acme/us-east-1/prod/env.hcl", "locals { env = \"prod\" }\n".into()),
        ("acme/eu-west-1/prod/env.hcl", "locals { env = \"prod\" }\n".into()),
        ("plain/net/main.tf", "terraform {\n  backend \"local\" {}\n}\nmodule \"vpc\" {\n  source = \"../../modules/vpc\"\n}\n".into()),
    ];
    for unit in APP_UNITS {
        files.push((
            leak(format!("{unit}/terragrunt.hcl")),
            unit_config("app", "inputs = { env = include.envcommon.locals.env }\n"),
        ));
    }
    for unit in VPC_UNITS {
        files.push((
            leak(format!("{unit}/terragrunt.hcl")),
            unit_config("vpc", ""),
        ));
    }
    files
}

fn leak(text: String) -> &'static str {
    Box::leak(text.into_boxed_str())
}

fn kinds(outcome: &DetectOutcome) -> BTreeSet<(ChangeKind, String)> {
    outcome
        .detection
        .changes
        .iter()
        .flat_map(|change| {
            let units: Vec<String> = if change.units.is_empty() {
                vec!["-".into()]
            } else {
                change.units.clone()
            };
            units.into_iter().map(move |unit| (change.kind, unit))
        })
        .collect()
}

fn expect(pairs: &[(ChangeKind, &[&str])]) -> BTreeSet<(ChangeKind, String)> {
    pairs
        .iter()
        .flat_map(|(kind, units)| units.iter().map(move |unit| (*kind, (*unit).to_owned())))
        .collect()
}

const ALL_TERRAGRUNT: [&str; 6] = [
    APP_UNITS[0],
    APP_UNITS[1],
    APP_UNITS[2],
    VPC_UNITS[0],
    VPC_UNITS[1],
    VPC_UNITS[2],
];

/// (case, files changed (`None` deletes), expected (kind, units), expected refusals)
type Case = (
    &'static str,
    Vec<(&'static str, Option<&'static str>)>,
    Vec<(ChangeKind, &'static [&'static str])>,
    usize,
);

fn cases() -> Vec<Case> {
    use ChangeKind::*;
    let us_east: &'static [&'static str] =
        &[APP_UNITS[0], APP_UNITS[1], VPC_UNITS[0], VPC_UNITS[1]];
    vec![
        (
            "the root config changes every unit that includes it",
            vec![("root.hcl", Some("# edited\n"))],
            vec![(HclChanged, &ALL_TERRAGRUNT)],
            0,
        ),
        (
            "the account file is read by the root config of every unit",
            vec![(
                "acme/account.hcl",
                Some("locals { account_name = \"acme2\" }\n"),
            )],
            vec![(HclChanged, &ALL_TERRAGRUNT)],
            0,
        ),
        (
            "a region file reaches that region's units only",
            vec![(
                "acme/us-east-1/region.hcl",
                Some("locals { region = \"us-east-2\" }\n"),
            )],
            vec![(HclChanged, us_east)],
            0,
        ),
        (
            "an env file reaches the units of that env that read it",
            vec![(
                "acme/us-east-1/dev/env.hcl",
                Some("locals { env = \"dev\" }\n# x\n"),
            )],
            vec![(HclChanged, &[APP_UNITS[0]])],
            0,
        ),
        (
            "a template read by the root config",
            vec![("templates/provider.tf.tpl", Some("# new\n"))],
            vec![(FileChanged, &ALL_TERRAGRUNT)],
            0,
        ),
        (
            "an _envcommon file changes the units that include it",
            vec![(
                "_envcommon/app.hcl",
                Some(leak(format!("{ENVCOMMON_APP}\n# edited\n"))),
            )],
            vec![(EnvCommonChanged, &APP_UNITS)],
            0,
        ),
        (
            "an _envcommon file included by an include (nested chain)",
            vec![("_envcommon/base.hcl", Some("locals { owner = \"sre\" }\n"))],
            vec![(EnvCommonChanged, &APP_UNITS)],
            0,
        ),
        (
            "a data file read with file()",
            vec![("data/prod.json", Some("{\"x\": 1}\n"))],
            vec![(FileChanged, &[APP_UNITS[1], APP_UNITS[2]])],
            0,
        ),
        (
            "a file of a module's local module, recursively",
            vec![("modules/lib/lib.txt", Some("lib2\n"))],
            vec![(FileChanged, &APP_UNITS)],
            0,
        ),
        (
            "a file added to a module directory",
            vec![("modules/app/extra.tf", Some("locals {}\n"))],
            vec![(FileChanged, &APP_UNITS)],
            0,
        ),
        (
            "a module used by terragrunt and plain units",
            vec![(
                "modules/vpc/main.tf",
                Some("variable \"cidr\" { default = \"x\" }\n"),
            )],
            vec![(
                FileChanged,
                &[VPC_UNITS[0], VPC_UNITS[1], VPC_UNITS[2], "plain/net"],
            )],
            0,
        ),
        (
            "a unit's own file",
            vec![(
                "acme/us-east-1/dev/app/terragrunt.hcl",
                Some(leak(unit_config("app", "inputs = { env = \"x\" }\n"))),
            )],
            vec![(UnitChanged, &[APP_UNITS[0]])],
            0,
        ),
        (
            "a new unit",
            vec![(
                "acme/us-east-1/dev/db/terragrunt.hcl",
                Some(leak(unit_config("vpc", ""))),
            )],
            vec![(UnitAdded, &["acme/us-east-1/dev/db"])],
            0,
        ),
        (
            "a deleted leaf unit",
            vec![("acme/us-east-1/dev/app/terragrunt.hcl", None)],
            vec![(UnitDeleted, &[APP_UNITS[0]])],
            0,
        ),
        (
            "a deleted unit that another still depends on is refused",
            vec![("acme/us-east-1/dev/vpc/terragrunt.hcl", None)],
            vec![(UnitDeleted, &[VPC_UNITS[0]])],
            1,
        ),
        (
            "one unit under several kinds is listed under each",
            vec![
                (
                    "acme/us-east-1/dev/env.hcl",
                    Some("locals { env = \"dev\" }\n#\n"),
                ),
                (
                    "acme/us-east-1/dev/app/terragrunt.hcl",
                    Some(leak(unit_config("app", "inputs = {}\n"))),
                ),
            ],
            vec![
                (HclChanged, &[APP_UNITS[0]]),
                (UnitChanged, &[APP_UNITS[0]]),
            ],
            0,
        ),
        (
            "a drift history file is drift, not a unit change",
            vec![("acme/us-east-1/prod/app/.drift-history.json", Some("[]\n"))],
            vec![(DriftDetected, &[APP_UNITS[1]])],
            0,
        ),
        (
            "accounts.yml",
            vec![("accounts.yml", Some("acme: {id: \"1\"}\n"))],
            vec![(AccountsChanged, &["-"])],
            0,
        ),
        (
            "a new account request",
            vec![(
                "_new-account-requests/acme-staging.yml",
                Some("name: acme-staging\n"),
            )],
            vec![(AccountsRequested, &["-"])],
            0,
        ),
        (
            "a README outside units changes nothing",
            vec![("docs/guide.txt", Some("hello\n"))],
            vec![],
            0,
        ),
        (
            "ignore-list globs change nothing, even inside a unit",
            vec![("acme/us-east-1/dev/app/README.md", Some("notes\n"))],
            vec![],
            0,
        ),
        (
            "a shared file that does not parse affects every unit under its directory",
            vec![("acme/us-east-1/dev/env.hcl", Some("locals {\n  env = \n"))],
            vec![(HclChanged, &[APP_UNITS[0], VPC_UNITS[0]])],
            0,
        ),
    ]
}

#[test]
fn each_change_kind_gives_exactly_the_expected_units() {
    let layout = layout();
    for (name, changes, expected, refusals) in cases() {
        let (history, base) = History::new(&layout);
        let changes: Vec<(&str, Option<String>)> = changes
            .iter()
            .map(|(p, t)| (*p, t.map(str::to_owned)))
            .collect();
        let head = history.commit(&changes);
        let outcome = history.detect(Some(&base), &head);
        assert_eq!(
            kinds(&outcome),
            expect(&expected),
            "{name}; warnings: {:?}",
            outcome.detection.warnings
        );
        assert_eq!(
            outcome.detection.refusals.len(),
            refusals,
            "{name}: {:?}",
            outcome.detection.refusals
        );
        // Warnings are for what cannot be understood, or dependencies that point nowhere (the
        // refused deletion leaves one); no other case has any.
        let expects_warning = name.contains("does not parse") || refusals > 0;
        assert_eq!(
            !outcome.detection.warnings.is_empty(),
            expects_warning,
            "{name}: {:?}",
            outcome.detection.warnings
        );
    }
}

#[test]
fn the_layout_itself_is_understood_without_warnings() {
    let (history, base) = History::new(&layout());
    let head = history.commit(&[("root.hcl", Some(format!("{ROOT_HCL}\n")))]);
    let outcome = history.detect(Some(&base), &head);
    assert_eq!(outcome.detection.warnings, Vec::<String>::new());
}

#[test]
fn a_refusal_names_both_sides() {
    let (history, base) = History::new(&layout());
    let head = history.commit(&[("acme/us-east-1/dev/vpc/terragrunt.hcl", None)]);
    let outcome = history.detect(Some(&base), &head);
    assert_eq!(
        outcome.detection.refusals,
        ["acme/us-east-1/dev/vpc is deleted, but acme/us-east-1/dev/app still depends on it"]
    );
}

#[test]
fn renaming_the_root_config_while_editing_every_unit_reports_both_sides() {
    let (history, base) = History::new(&layout());
    let mut changes: Vec<(&str, Option<String>)> =
        vec![("root.hcl", None), ("common.hcl", Some(ROOT_HCL.into()))];
    let envcommon_app = ENVCOMMON_APP.replace("root.hcl", "common.hcl");
    let envcommon_vpc = ENVCOMMON_VPC.to_owned();
    changes.push(("_envcommon/app.hcl", Some(envcommon_app)));
    changes.push(("_envcommon/vpc.hcl", Some(format!("{envcommon_vpc}\n"))));
    for unit in APP_UNITS {
        changes.push((
            leak(format!("{unit}/terragrunt.hcl")),
            Some(unit_config("app", "").replace("root.hcl", "common.hcl")),
        ));
    }
    for unit in VPC_UNITS {
        changes.push((
            leak(format!("{unit}/terragrunt.hcl")),
            Some(unit_config("vpc", "").replace("root.hcl", "common.hcl")),
        ));
    }
    let head = history.commit(&changes);
    let outcome = history.detect(Some(&base), &head);
    use ChangeKind::*;
    assert_eq!(
        kinds(&outcome),
        expect(&[
            (UnitChanged, &ALL_TERRAGRUNT),
            (HclChanged, &ALL_TERRAGRUNT),
            (EnvCommonChanged, &ALL_TERRAGRUNT)
        ])
    );
    // The old root is judged at base, where every unit read it; the new one at head.
    let hcl = outcome
        .detection
        .changes
        .iter()
        .find(|c| c.kind == HclChanged)
        .unwrap();
    assert_eq!(hcl.files, ["common.hcl", "root.hcl"]);
    assert!(
        outcome.detection.warnings.is_empty(),
        "{:?}",
        outcome.detection.warnings
    );
}

#[test]
fn a_root_terragrunt_hcl_is_not_a_unit_and_find_in_parent_folders_without_a_name_finds_it() {
    let files = vec![
        (
            "terragrunt.hcl",
            "remote_state {\n  backend = \"local\"\n}\n".to_owned(),
        ),
        (
            "live/a/terragrunt.hcl",
            "include {\n  path = find_in_parent_folders()\n}\n".to_owned(),
        ),
        (
            "live/b/terragrunt.hcl",
            "include {\n  path = find_in_parent_folders()\n}\n".to_owned(),
        ),
    ];
    let (history, base) = History::new(&files);
    let head = history.commit(&[("terragrunt.hcl", Some("# edited\n".into()))]);
    let outcome = history.detect(Some(&base), &head);
    assert_eq!(
        kinds(&outcome),
        expect(&[(ChangeKind::HclChanged, &["live/a", "live/b"])])
    );
}

#[test]
fn a_unit_with_an_unresolvable_read_is_conservatively_affected_by_shared_changes() {
    let mut files = layout();
    files.push((
        "acme/us-east-1/dev/odd/terragrunt.hcl",
        "locals {\n  cfg = read_terragrunt_config(get_env(\"CONFIG\"))\n}\n".into(),
    ));
    let (history, base) = History::new(&files);
    let head = history.commit(&[("data/unread.json", Some("{}\n".into()))]);
    let outcome = history.detect(Some(&base), &head);
    assert_eq!(
        kinds(&outcome),
        expect(&[(ChangeKind::FileChanged, &["acme/us-east-1/dev/odd"])])
    );
    assert_eq!(
        outcome.detection.warnings,
        [
            "acme/us-east-1/dev/odd/terragrunt.hcl:2: cannot resolve the path read_terragrunt_config() reads: get_env() is only known at run time"
        ]
    );
}

#[test]
fn a_push_without_a_base_compares_with_the_first_parent_and_a_root_commit_adds_everything() {
    let (history, root) = History::new(&layout());
    let everything = history.detect(None, &root);
    assert_eq!(
        everything.base_sha,
        "0000000000000000000000000000000000000000"
    );
    let added = everything
        .detection
        .changes
        .iter()
        .find(|c| c.kind == ChangeKind::UnitAdded)
        .unwrap();
    assert_eq!(
        added.units.len(),
        ALL_TERRAGRUNT.len() + 1,
        "every unit added"
    );
    assert_eq!(
        everything.detection.units().len(),
        ALL_TERRAGRUNT.len() + 1,
        "and nothing else"
    );
    let head = history.commit(&[("data/dev.json", Some("{\"y\": 2}\n".into()))]);
    let outcome = history.detect(None, &head);
    assert_eq!(outcome.base_sha, root);
    assert_eq!(
        kinds(&outcome),
        expect(&[(ChangeKind::FileChanged, &[APP_UNITS[0]])])
    );
}

#[test]
fn the_json_report_is_stable() {
    let (history, base) = History::new(&layout());
    let head = history.commit(&[
        (
            "acme/us-east-1/dev/env.hcl",
            Some("locals { env = \"dev\" }\n#\n".into()),
        ),
        (
            "modules/vpc/main.tf",
            Some("variable \"cidr\" { default = \"10.0.0.0/16\" }\n".into()),
        ),
        ("accounts.yml", Some("acme: {id: \"1\"}\n".into())),
    ]);
    let report = history.detect(Some(&base), &head).report().to_json();
    let expected = r#"{
  "base_sha": "BASE",
  "head_sha": "HEAD",
  "event": "push",
  "changes": [
    {
      "kind": "HclChanged",
      "units": [
        "acme/us-east-1/dev/app"
      ],
      "files": [
        "acme/us-east-1/dev/env.hcl"
      ]
    },
    {
      "kind": "FileChanged",
      "units": [
        "acme/eu-west-1/prod/vpc",
        "acme/us-east-1/dev/vpc",
        "acme/us-east-1/prod/vpc",
        "plain/net"
      ],
      "files": [
        "modules/vpc/main.tf"
      ]
    },
    {
      "kind": "AccountsChanged",
      "units": [],
      "files": [
        "accounts.yml"
      ]
    }
  ],
  "warnings": []
}"#;
    assert_eq!(
        report,
        expected.replace("BASE", &base).replace("HEAD", &head)
    );
}

#[test]
fn the_base_snapshot_derived_from_head_and_the_diff_equals_walking_the_base_tree() {
    let (history, base) = History::new(&layout());
    let head = history.commit(&[
        ("root.hcl", None),
        ("common.hcl", Some(ROOT_HCL.into())),
        ("data/dev.json", Some("{\"changed\": true}\n".into())),
        ("acme/us-east-1/dev/vpc/terragrunt.hcl", None),
        (
            "acme/us-east-1/dev/db/terragrunt.hcl",
            Some(unit_config("vpc", "")),
        ),
        (
            "_envcommon/base.hcl",
            Some("locals { owner = \"sre\" }\n".into()),
        ),
    ]);
    let repo = orchestrator::git::GitRepo::open(history.path()).unwrap();
    let (base, head) = (
        git2::Oid::from_str(&base).unwrap(),
        git2::Oid::from_str(&head).unwrap(),
    );
    let mut blobs = orchestrator::git::BlobCache::default();
    let head_snapshot = repo.snapshot(Some(head), &mut blobs).unwrap();
    let walked = repo.snapshot(Some(base), &mut blobs).unwrap();
    let (_, derived) = repo
        .changes_and_base(Some(base), head, &head_snapshot, &mut blobs)
        .unwrap();
    assert_eq!(derived, walked);
}
