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

/// The `[dependencies]` section of a manifest (not dev-dependencies).
fn dependencies(manifest: &str) -> String {
    let text = read(&workspace_root().join(manifest));
    let start = text
        .find("[dependencies]")
        .map_or(text.len(), |i| i + "[dependencies]".len());
    let rest = &text[start..];
    rest[..rest.find("\n[").unwrap_or(rest.len())].to_owned()
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
    for manifest in files(&["Cargo.toml"]) {
        let name = relative(&manifest);
        if name == "Cargo.toml" || name == "broker/Cargo.toml" {
            continue;
        }
        assert!(
            !read(&manifest).contains("lapin"),
            "{name} depends on lapin"
        );
    }
    for source in files(&[".rs"]) {
        let name = relative(&source);
        if name.starts_with("broker/") || name == "harness/tests/tidy.rs" {
            continue;
        }
        assert!(!read(&source).contains("lapin::"), "{name} uses lapin");
    }
}

#[test]
fn proto_types_depends_on_neither_tokio_nor_lapin() {
    let deps = dependencies("proto-types/Cargo.toml");
    for forbidden in ["tokio", "lapin", "broker"] {
        assert!(
            !deps.contains(forbidden),
            "proto-types depends on {forbidden}"
        );
    }
}

#[test]
fn only_the_executor_starts_processes() {
    // The CLI and the libraries never spawn anything; the executor starts git and the IaC
    // tools; the test harness starts the binary, git and rabbitmqctl.
    let spawn = ["Command", "::new("].concat();
    for source in files(&[".rs"]) {
        let name = relative(&source);
        if name.starts_with("executor-worker/") || name.starts_with("harness/") {
            continue;
        }
        assert!(!read(&source).contains(&spawn), "{name} starts a process");
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
