//! Architecture invariants and house rules, checked on every test run (ARCHITECTURE.md lists
//! them; this file keeps them true).
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: fail loudly.

use std::path::{Path, PathBuf};

use harness::workspace_root;

/// Every tracked-looking file under the workspace with one of `extensions`, skipping build
/// output and tool folders.
fn files(extensions: &[&str]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![workspace_root()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                if !name.starts_with('.') && name != "target" {
                    stack.push(path);
                }
            } else if extensions.iter().any(|ext| name.ends_with(ext)) {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

fn relative(path: &Path) -> String {
    path.strip_prefix(workspace_root())
        .unwrap()
        .display()
        .to_string()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn every_rust_file_opens_with_a_module_doc_comment() {
    let missing: Vec<String> = files(&[".rs"])
        .into_iter()
        .filter(|path| !read(path).starts_with("//!"))
        .map(|path| relative(&path))
        .collect();
    assert!(
        missing.is_empty(),
        "files without a leading //! line: {missing:?}"
    );
}

#[test]
fn no_test_is_ignored_or_expected_to_panic() {
    let ignore = ["#[", "ignore]"].concat();
    let should_panic = ["#[", "should_panic"].concat();
    let offenders: Vec<String> = files(&[".rs"])
        .into_iter()
        .filter(|path| {
            let text = read(path);
            text.contains(&ignore) || text.contains(&should_panic)
        })
        .map(|path| relative(&path))
        .collect();
    assert!(offenders.is_empty(), "{offenders:?}");
}

#[test]
fn lapin_is_used_by_the_broker_crate_only() {
    let manifest = workspace_root().join("Cargo.toml");
    assert_eq!(
        direct_dependents(&manifest, "lapin"),
        ["broker"],
        "only the broker crate may depend on lapin"
    );
    for source in files(&[".rs"]) {
        let name = relative(&source);
        if name.starts_with("broker/") || name == "harness/tests/tidy.rs" {
            continue;
        }
        assert!(!read(&source).contains("lapin::"), "{name} uses lapin");
    }
}

/// Every package `package` of the workspace at `manifest` needs to build, transitively, through
/// normal dependencies only (not dev or build ones), as `cargo metadata` resolves them.
fn normal_dependencies(manifest: &Path, package: &str) -> std::collections::BTreeSet<String> {
    let metadata = metadata(manifest);
    let name_of = |id: &str| package_name(&metadata, id);
    let nodes = metadata["resolve"]["nodes"].as_array().unwrap();
    let root = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == package)
        .unwrap_or_else(|| panic!("no package {package} in {}", manifest.display()))["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut seen = std::collections::BTreeSet::new();
    let mut stack = vec![root];
    while let Some(id) = stack.pop() {
        let node = nodes.iter().find(|n| n["id"] == id.as_str()).unwrap();
        for dep in node["deps"].as_array().unwrap() {
            let normal = dep["dep_kinds"]
                .as_array()
                .unwrap()
                .iter()
                .any(|kind| kind["kind"].is_null());
            let dep_id = dep["pkg"].as_str().unwrap().to_owned();
            if normal && seen.insert(name_of(&dep_id)) {
                stack.push(dep_id);
            }
        }
    }
    seen
}

/// The workspace's own packages that name `dependency` in their manifest (any kind), as
/// `cargo metadata` resolves them.
fn direct_dependents(manifest: &Path, dependency: &str) -> Vec<String> {
    let metadata = metadata(manifest);
    let members = metadata["workspace_members"].as_array().unwrap();
    let mut dependents: Vec<String> = metadata["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|node| members.contains(&node["id"]))
        .filter(|node| {
            node["deps"]
                .as_array()
                .unwrap()
                .iter()
                .any(|dep| package_name(&metadata, dep["pkg"].as_str().unwrap()) == dependency)
        })
        .map(|node| package_name(&metadata, node["id"].as_str().unwrap()))
        .collect();
    dependents.sort();
    dependents
}

fn package_name(metadata: &serde_json::Value, id: &str) -> String {
    metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == id)
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .unwrap()
}

/// `cargo metadata` of the workspace at `manifest`, resolved for this machine's platform.
fn metadata(manifest: &Path) -> serde_json::Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // This machine's platform only: other platforms' crates need not be downloaded.
    let rustc = std::process::Command::new("rustc")
        .arg("-vV")
        .output()
        .unwrap();
    let host = String::from_utf8_lossy(&rustc.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("host: "))
        .unwrap()
        .to_owned();
    let output = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--offline"])
        .args(["--filter-platform", &host, "--manifest-path"])
        .arg(manifest)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "cargo metadata --filter-platform {host} --manifest-path {}: {}",
        manifest.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Which of `forbidden` `package` needs to build.
fn forbidden_in(manifest: &Path, package: &str, forbidden: &[&str]) -> Vec<String> {
    let needed = normal_dependencies(manifest, package);
    forbidden
        .iter()
        .filter(|name| needed.contains(**name))
        .map(|name| (*name).to_owned())
        .collect()
}

#[test]
fn proto_types_depends_on_neither_tokio_nor_lapin() {
    let manifest = workspace_root().join("Cargo.toml");
    let found = forbidden_in(&manifest, "proto-types", &["tokio", "lapin", "broker"]);
    assert!(found.is_empty(), "proto-types needs {found:?} to build");
}

/// What the dispatcher's pure core may never need, even transitively: a runtime, a broker
/// client, a database, an HTTP client, git, or the crates that wrap them.
const IO_CRATES: &[&str] = &[
    "tokio",
    "mio",
    "lapin",
    "rusqlite",
    "libsqlite3-sys",
    "octocrab",
    "hyper",
    "reqwest",
    "git2",
    "broker",
    "telemetry",
    "opentelemetry",
    "dispatcher",
];

#[test]
fn the_dispatcher_core_needs_no_io_crate() {
    let manifest = workspace_root().join("Cargo.toml");
    let found = forbidden_in(&manifest, "dispatcher-core", IO_CRATES);
    assert!(
        found.is_empty(),
        "dispatcher-core needs {found:?} to build: decisions must stay pure"
    );
}

#[test]
fn the_core_check_fails_when_the_core_gains_an_io_dependency() {
    // A fixture workspace whose `dispatcher-core` manifest adds a database, as a careless
    // change would: the same check as above must name it.
    let dir = tempfile::tempdir().unwrap();
    fixture_package(
        dir.path(),
        "dispatcher-core",
        "rusqlite = { path = \"../rusqlite\" }\n",
    );
    fixture_package(dir.path(), "rusqlite", "");
    fixture_workspace(dir.path(), &["dispatcher-core", "rusqlite"]);
    let manifest = dir.path().join("Cargo.toml");
    assert_eq!(
        forbidden_in(&manifest, "dispatcher-core", IO_CRATES),
        ["rusqlite"]
    );
}

/// A package of a fixture workspace, with `deps` as its `[dependencies]`.
fn fixture_package(root: &Path, name: &str, deps: &str) {
    let path = root.join(name);
    std::fs::create_dir_all(path.join("src")).unwrap();
    std::fs::write(
        path.join("Cargo.toml"),
        format!("[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\n{deps}"),
    )
    .unwrap();
    std::fs::write(path.join("src/lib.rs"), "").unwrap();
}

fn fixture_workspace(root: &Path, members: &[&str]) {
    let members: Vec<String> = members.iter().map(|m| format!("{m:?}")).collect();
    std::fs::write(
        root.join("Cargo.toml"),
        format!(
            "[workspace]\nmembers = [{}]\nresolver = \"2\"\n",
            members.join(", ")
        ),
    )
    .unwrap();
}

#[test]
fn the_dependency_check_catches_a_transitive_io_dependency() {
    // A fixture workspace: `core` depends on `middle`, which depends on a package named tokio.
    let dir = tempfile::tempdir().unwrap();
    fixture_package(dir.path(), "core", "middle = { path = \"../middle\" }\n");
    fixture_package(dir.path(), "middle", "tokio = { path = \"../tokio\" }\n");
    fixture_package(dir.path(), "tokio", "");
    fixture_workspace(dir.path(), &["core", "middle", "tokio"]);
    let manifest = dir.path().join("Cargo.toml");
    assert_eq!(
        forbidden_in(&manifest, "core", &["tokio", "lapin"]),
        ["tokio"]
    );
    assert!(forbidden_in(&manifest, "tokio", &["tokio", "lapin"]).is_empty());
}

#[test]
fn only_the_executor_starts_processes() {
    // The CLI and the libraries never spawn anything; the executor starts git and the IaC
    // tools; the dispatcher's mirror of a deploy branch (for scheduled drift checks) starts
    // git and nothing else; the test harness starts the binary, git and rabbitmqctl.
    let spawn = ["Command", "::new("].concat();
    let mirror = "dispatcher/src/canonical.rs";
    for source in files(&[".rs"]) {
        let name = relative(&source);
        if name.starts_with("executor-worker/") || name.starts_with("harness/") {
            continue;
        }
        let text = read(&source);
        if name == mirror {
            // Its tests make repositories with sh and git; the code itself runs git only.
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            let spawned: Vec<&str> = code
                .match_indices(&spawn)
                .map(|(at, _)| &code[at + spawn.len()..at + spawn.len() + 6])
                .collect();
            assert_eq!(spawned, ["\"git\")"], "{name} starts only git");
            continue;
        }
        assert!(!text.contains(&spawn), "{name} starts a process");
    }
    for (file, tool) in [
        ("executor-worker/src/runner.rs", "terraform"),
        ("executor-worker/src/workspace.rs", "git"),
    ] {
        assert!(
            read(&workspace_root().join(file)).contains(&spawn),
            "{file} should be where {tool} starts"
        );
    }
}

#[test]
fn tests_poll_with_a_deadline_instead_of_sleeping() {
    let sleep = ["thread::", "sleep("].concat();
    let tokio_sleep = ["time::", "sleep("].concat();
    for source in files(&[".rs"]) {
        let name = relative(&source);
        let text = read(&source);
        // Product code may wait on purpose (a retry's backoff); test code may not.
        let is_test_file =
            name.starts_with("harness/") || name.contains("/tests/") || name.ends_with("/tests.rs");
        let test_code = match text.find("#[cfg(test)]") {
            _ if is_test_file => text.as_str(),
            Some(at) => &text[at..],
            None => "",
        };
        let count = test_code.matches(&sleep).count() + test_code.matches(&tokio_sleep).count();
        // The one allowed sleep is the pause between polls inside `harness::poll_until`.
        let allowed = usize::from(name == "harness/src/lib.rs");
        assert!(count <= allowed, "{name} sleeps {count} time(s)");
    }
}
