//! Detection benchmark: generated Terragrunt monorepos of 1k, 10k and 50k units, a realistic
//! commit, and the detection time printed next to the floor measured in the same run.
//!
//! The floor is what any exact detector must do: `git diff` of the two commits plus reading every
//! configuration file (`.hcl`, `.tf`) of the head commit once. The target is detection within 3×
//! the floor at 10k units.
//!
//!     cargo bench -p orchestrator --bench detection            # 1000 10000 50000
//!     cargo bench -p orchestrator --bench detection -- 10000   # one size
#![allow(clippy::print_stdout, clippy::print_stderr)] // A benchmark reports on the terminal.

// The allocator of the `pipelines` binary, so that this measures what users run.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use git2::{ObjectType, Oid, Repository, TreeWalkMode, TreeWalkResult};
use orchestrator::{DetectRequest, detect_changes};
use proto_types::EventKind;

const COMPONENTS: [&str; 8] = [
    "vpc",
    "app",
    "db",
    "cache",
    "queue",
    "dns",
    "iam",
    "monitoring",
];
/// Instances of each component per environment: 8 × 5 = 40 units per environment.
const PER_COMPONENT: usize = 5;
const TARGET_RATIO: f64 = 3.0;
/// Alternating pairs per size; `PIPELINES_BENCH_RUNS` overrides it (profilers want one).
const RUNS: usize = 11;

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|arg| arg.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![1_000, 10_000, 50_000]
    } else {
        sizes
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runs: usize = std::env::var("PIPELINES_BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(RUNS)
        .max(1);
    println!(
        "detection benchmark: {runs} alternating runs of floor and detection, medians, {cores} core(s)"
    );
    println!(
        "{:>7} {:>8} {:>9} {:>11} {:>12} {:>7}  target",
        "units", "files", "affected", "floor (ms)", "detect (ms)", "ratio"
    );
    for units in sizes {
        let dir = tempfile::tempdir().expect("temp dir");
        let generated = Instant::now();
        let (repo, base, head, files) = generate(dir.path(), units);
        eprintln!(
            "  generated {units} units ({files} files) in {:.1}s",
            generated.elapsed().as_secs_f64()
        );
        // Floor and detection alternate, so both see the same machine; the ratio is taken per
        // pair, then the median of those.
        let (base_rev, head_rev) = (base.to_string(), head.to_string());
        let mut affected = 0;
        let mut floors = Vec::new();
        let mut detects = Vec::new();
        let mut ratios = Vec::new();
        for _ in 0..runs {
            let floor = time(|| floor(&repo, base, head));
            let detect = time(|| {
                let outcome = detect_changes(DetectRequest {
                    repo: dir.path(),
                    base: Some(&base_rev),
                    head: &head_rev,
                    event: EventKind::Push,
                })
                .expect("detection");
                affected = outcome.detection.units().len();
                assert!(
                    outcome.detection.warnings.is_empty(),
                    "{:?}",
                    outcome.detection.warnings
                );
            });
            ratios.push(detect.as_secs_f64() / floor.as_secs_f64());
            floors.push(floor);
            detects.push(detect);
        }
        ratios.sort_by(f64::total_cmp);
        let (floor, detect) = (median(floors), median(detects));
        let ratio = ratios[ratios.len() / 2];
        let verdict = if ratio <= TARGET_RATIO {
            "meets ≤3× floor"
        } else {
            "MISSES ≤3× floor"
        };
        println!(
            "{units:>7} {files:>8} {affected:>9} {:>11.1} {:>12.1} {ratio:>6.2}×  {verdict}",
            ms(floor),
            ms(detect)
        );
    }
}

fn time(f: impl FnOnce()) -> Duration {
    let start = Instant::now();
    f();
    start.elapsed()
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The floor: diff the commits, then read every configuration blob of head once.
fn floor(repo: &Repository, base: Oid, head: Oid) {
    let base_tree = repo
        .find_commit(base)
        .and_then(|c| c.tree())
        .expect("base tree");
    let head_tree = repo
        .find_commit(head)
        .and_then(|c| c.tree())
        .expect("head tree");
    let diff = repo
        .diff_tree_to_tree(Some(&base_tree), Some(&head_tree), None)
        .expect("diff");
    let mut bytes = diff.deltas().count();
    head_tree
        .walk(TreeWalkMode::PreOrder, |_, entry| {
            let name = entry.name().unwrap_or_default();
            if entry.kind() == Some(ObjectType::Blob)
                && (name.ends_with(".hcl") || name.ends_with(".tf"))
            {
                bytes += repo
                    .find_blob(entry.id())
                    .map(|blob| blob.content().len())
                    .unwrap_or(0);
            }
            TreeWalkResult::Ok
        })
        .expect("walk");
    std::hint::black_box(bytes);
}

/// Builds the repository: commit 1 is the monorepo, commit 2 the change. Returns the repo, both
/// commits and the number of files.
fn generate(path: &std::path::Path, units: usize) -> (Repository, Oid, Oid, usize) {
    let repo = Repository::init_bare(path).expect("init");
    let odb = repo.odb().expect("odb");
    let mempack = odb.add_new_mempack_backend(1000).expect("mempack");
    let mut files = layout(units);
    let count = files.len();
    let base = commit(&repo, &files, None);
    // The change: one env file (all its units read it), one unit, and one module (every unit
    // of that component sources it).
    let env = files
        .keys()
        .find(|p| p.ends_with("env.hcl"))
        .cloned()
        .expect("an env");
    files.insert(
        env.clone(),
        format!("{}# raise the instance count\n", files[&env]),
    );
    let unit = files
        .keys()
        .find(|p| p.ends_with("/app-0/terragrunt.hcl"))
        .cloned()
        .expect("a unit");
    files.insert(unit.clone(), files[&unit].replace("size = 1", "size = 2"));
    files.insert(
        "modules/db/main.tf".into(),
        format!("{}\n# tuned\n", files["modules/db/main.tf"]),
    );
    let head = commit(&repo, &files, Some(base));
    // Persist everything as one pack, as a clone would have it.
    let mut pack = git2::Buf::new();
    mempack.dump(&repo, &mut pack).expect("dump");
    {
        let mut writer = odb.packwriter().expect("packwriter");
        writer.write_all(&pack).expect("write pack");
        writer.commit().expect("commit pack");
    }
    mempack.reset().expect("reset");
    drop(odb);
    let repo = Repository::open(path).expect("reopen");
    (repo, base, head, count)
}

fn commit(repo: &Repository, files: &BTreeMap<String, String>, parent: Option<Oid>) -> Oid {
    #[derive(Default)]
    struct Dir {
        files: BTreeMap<String, Oid>,
        dirs: BTreeMap<String, Dir>,
    }
    fn write(repo: &Repository, dir: &Dir) -> Oid {
        let mut builder = repo.treebuilder(None).expect("treebuilder");
        for (name, sub) in &dir.dirs {
            builder
                .insert(name, write(repo, sub), 0o040000)
                .expect("insert tree");
        }
        for (name, blob) in &dir.files {
            builder.insert(name, *blob, 0o100644).expect("insert blob");
        }
        builder.write().expect("write tree")
    }
    let mut root = Dir::default();
    for (path, content) in files {
        let blob = repo.blob(content.as_bytes()).expect("blob");
        let mut parts: Vec<&str> = path.split('/').collect();
        let name = parts.pop().expect("file name");
        let mut dir = &mut root;
        for part in parts {
            dir = dir.dirs.entry(part.to_owned()).or_default();
        }
        dir.files.insert(name.to_owned(), blob);
    }
    let tree = repo.find_tree(write(repo, &root)).expect("tree");
    let signature = git2::Signature::now("bench", "bench@localhost").expect("signature");
    let parents: Vec<git2::Commit<'_>> = parent
        .map(|p| repo.find_commit(p).expect("parent"))
        .into_iter()
        .collect();
    let parent_refs: Vec<&git2::Commit<'_>> = parents.iter().collect();
    repo.commit(
        None,
        &signature,
        &signature,
        "generated",
        &tree,
        &parent_refs,
    )
    .expect("commit")
}

/// A Terragrunt monorepo laid out as the Gruntwork reference architecture does: accounts,
/// regions and environments, `_envcommon` per component, local modules, shared data files.
fn layout(units: usize) -> BTreeMap<String, String> {
    let per_env = COMPONENTS.len() * PER_COMPONENT;
    let envs = units.div_ceil(per_env);
    let (regions_per_account, envs_per_region) = (5, 5);
    let mut files = BTreeMap::new();
    files.insert("root.hcl".into(), ROOT.into());
    files.insert(
        "templates/provider.tf.tpl".into(),
        "provider \"aws\" {\n  region = \"${region}\"\n}\n".into(),
    );
    for (i, component) in COMPONENTS.iter().enumerate() {
        let dependency = if i == 0 {
            String::new()
        } else {
            "dependency \"vpc\" {\n  config_path = \"${get_terragrunt_dir()}/../vpc-0\"\n  mock_outputs = { vpc_id = \"vpc-mock\" }\n}\n".into()
        };
        files.insert(
            format!("_envcommon/{component}.hcl"),
            ENVCOMMON.replace("COMPONENT", component) + &dependency,
        );
        files.insert(format!("modules/{component}/main.tf"), format!("variable \"name\" {{}}\nvariable \"size\" {{}}\nlocals {{\n  policy = file(\"${{path.module}}/policy.json\")\n}}\noutput \"id\" {{\n  value = \"{component}-${{var.name}}\"\n}}\n"));
        files.insert(
            format!("modules/{component}/policy.json"),
            "{\"Version\": \"2012-10-17\"}\n".into(),
        );
    }
    for env_name in ["dev", "stage", "prod"] {
        files.insert(
            format!("data/{env_name}.json"),
            format!("{{\"tier\": \"{env_name}\"}}\n"),
        );
    }
    let mut made = 0;
    'outer: for e in 0..envs {
        let account = e / (regions_per_account * envs_per_region);
        let region = (e / envs_per_region) % regions_per_account;
        let env_name = ["dev", "stage", "prod"][e % 3];
        let env_dir = format!(
            "account-{account}/region-{region}/{env_name}-{}",
            e % envs_per_region
        );
        files.insert(format!("account-{account}/account.hcl"), format!("locals {{\n  account_name = \"account-{account}\"\n  account_id   = \"{:012}\"\n}}\n", account));
        files.insert(
            format!("account-{account}/region-{region}/region.hcl"),
            format!("locals {{\n  region = \"region-{region}\"\n}}\n"),
        );
        files.insert(
            format!("{env_dir}/env.hcl"),
            format!("locals {{\n  env = \"{env_name}\"\n}}\n"),
        );
        for component in COMPONENTS {
            for n in 0..PER_COMPONENT {
                if made == units {
                    break 'outer;
                }
                files.insert(
                    format!("{env_dir}/{component}-{n}/terragrunt.hcl"),
                    format!(
                        "include \"root\" {{\n  path = find_in_parent_folders(\"root.hcl\")\n}}\n\n\
                         include \"envcommon\" {{\n  path   = \"${{dirname(find_in_parent_folders(\"root.hcl\"))}}/_envcommon/{component}.hcl\"\n  expose = true\n}}\n\n\
                         inputs = {{\n  name = \"{component}-{n}\"\n  size = 1\n}}\n"
                    ),
                );
                made += 1;
            }
        }
    }
    files
}

const ROOT: &str = r#"locals {
  account_vars = read_terragrunt_config(find_in_parent_folders("account.hcl"))
  region_vars  = read_terragrunt_config(find_in_parent_folders("region.hcl"))
  account_name = local.account_vars.locals.account_name
  region       = local.region_vars.locals.region
}

remote_state {
  backend = "s3"
  config = {
    bucket = "terraform-state-${local.account_name}"
    key    = "${path_relative_to_include()}/terraform.tfstate"
    region = local.region
  }
}

generate "provider" {
  path      = "provider.tf"
  if_exists = "overwrite_terragrunt"
  contents  = templatefile("${get_parent_terragrunt_dir()}/templates/provider.tf.tpl", { region = local.region })
}
"#;

const ENVCOMMON: &str = r#"locals {
  env_vars = read_terragrunt_config(find_in_parent_folders("env.hcl"))
  env      = local.env_vars.locals.env
}

terraform {
  source = "${dirname(find_in_parent_folders("root.hcl"))}/modules//COMPONENT"
}

inputs = {
  tier = file("${get_repo_root()}/data/${local.env}.json")
}
"#;
