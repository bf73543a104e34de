//! The end-to-end harness: real RabbitMQ vhosts, real git repositories, the real `pipelines`
//! binary and real terraform, each test with its own names so that tests run in parallel.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)] // Test code: fail loudly.

pub mod applies;
pub mod browser;
pub mod cluster;
pub mod deployment;
pub mod faults;
pub mod git;
pub mod github;
pub mod oidc;
pub mod otlp;
pub mod postgres;
pub mod process;
pub mod rabbit;
pub mod runs;
pub mod sandbox;
pub mod scenario;
pub mod sse;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The `pipelines` binary, built once per test process with the same profile as the tests, so
/// it is never stale.
pub fn pipelines_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        // target/<profile>/deps/<test-binary>, or target/<profile>/<bench binary> → target/<profile>
        let exe = std::env::current_exe().expect("test executable path");
        let mut profile_dir = exe.parent().expect("target/<profile>");
        if profile_dir.file_name().is_some_and(|name| name == "deps") {
            profile_dir = profile_dir.parent().expect("target/<profile>");
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = std::process::Command::new(cargo);
        build.args(["build", "--quiet", "-p", "pipelines", "--bin", "pipelines"]);
        if profile_dir
            .file_name()
            .is_some_and(|name| name == "release")
        {
            build.arg("--release");
        }
        let status = build.status().expect("running cargo build");
        assert!(
            status.success(),
            "cargo build of the pipelines binary failed"
        );
        let binary = profile_dir.join("pipelines");
        assert!(binary.is_file(), "{} missing after build", binary.display());
        binary
    })
}

/// Terraform or tofu must be on PATH: `scripts/test.sh` installs terraform when it is missing.
pub fn require_terraform() {
    let found = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path)
            .any(|dir| dir.join("terraform").is_file() || dir.join("tofu").is_file())
    });
    assert!(
        found,
        "neither terraform nor tofu is on PATH: run `bash scripts/test.sh`, which installs \
         terraform into .tools/ and puts it on PATH"
    );
}

/// Where the null provider sits in a filesystem mirror.
const NULL_PROVIDER: &str =
    "registry.terraform.io/hashicorp/null/2.1.2/linux_amd64/terraform-provider-null_v2.1.2_x4";

/// The filesystem mirror `scripts/lib.sh` (`ensure_null_provider`) fills, from
/// `PIPELINES_TEST_PROVIDER_MIRROR` or `.tools/terraform-mirror` in the workspace.
fn provider_mirror() -> PathBuf {
    std::env::var_os("PIPELINES_TEST_PROVIDER_MIRROR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".tools/terraform-mirror"))
}

/// For tests whose units have real resources: the null provider must be in the mirror.
pub fn require_null_provider() {
    let mirror = provider_mirror();
    assert!(
        mirror.join(NULL_PROVIDER).is_file(),
        "the Terraform null provider is not in {}: run `bash scripts/test.sh`, which installs it \
         (or `source scripts/lib.sh && ensure_null_provider`)",
        mirror.display()
    );
}

/// The workspace's root directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("harness/ sits in the workspace")
        .to_path_buf()
}

/// A Terraform CLI config of our own, so a machine-wide `TF_CLI_CONFIG_FILE` pointing at a
/// missing file cannot add warnings. The null provider comes from the local mirror (when it is
/// installed), so nothing reaches for the registry.
pub fn terraform_env(dir: &Path) -> Vec<(String, String)> {
    let rc = dir.join("terraformrc");
    let mirror = provider_mirror();
    let text = if mirror.join(NULL_PROVIDER).is_file() {
        format!(
            "provider_installation {{\n  filesystem_mirror {{\n    path    = \"{}\"\n    include = [\"registry.terraform.io/hashicorp/null\"]\n  }}\n  direct {{\n    exclude = [\"registry.terraform.io/hashicorp/null\"]\n  }}\n}}\n",
            mirror.display()
        )
    } else {
        String::new()
    };
    // Every `pipelines` command of a test comes through here, also while executors run
    // terraform with this file: rewriting it in place would let terraform read it empty (and
    // so reach for the registry). Written once, atomically.
    if std::fs::read_to_string(&rc).ok().as_deref() != Some(text.as_str()) {
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = dir.join(format!("terraformrc.{}.{n}.tmp", std::process::id()));
        std::fs::write(&tmp, &text).unwrap();
        std::fs::rename(&tmp, &rc).unwrap();
    }
    vec![
        (
            "TF_CLI_CONFIG_FILE".into(),
            rc.to_string_lossy().into_owned(),
        ),
        ("CHECKPOINT_DISABLE".into(), "1".into()),
        ("TF_IN_AUTOMATION".into(), "1".into()),
    ]
}

/// The rows of a run summary table (`UNIT ACTION ACCOUNT RESULT ...`), by unit:
/// `(action, account, result)` where a skip's result includes its reason.
pub fn summary_rows(stdout: &str) -> std::collections::BTreeMap<String, (String, String, String)> {
    let mut rows = std::collections::BTreeMap::new();
    let mut in_table = false;
    for line in stdout.lines() {
        if line.starts_with("UNIT ") {
            in_table = true;
            continue;
        }
        if !in_table || line.trim().is_empty() || line.starts_with("---") {
            in_table = in_table && !line.trim().is_empty();
            continue;
        }
        let parts: Vec<&str> = line.split_whitespace().collect();
        if parts.len() < 4 {
            continue;
        }
        let result = if parts[3] == "skipped" {
            let start = line.find("skipped").unwrap_or(0);
            let end = line[start..]
                .find(')')
                .map_or(line.len(), |i| start + i + 1);
            line[start..end].to_owned()
        } else {
            parts[3].to_owned()
        };
        rows.insert(
            parts[0].to_owned(),
            (parts[1].to_owned(), parts[2].to_owned(), result),
        );
    }
    rows
}

/// Polls `check` until it returns `Some`, or fails the test after `deadline` with `what`.
pub fn poll_until<T>(
    deadline: std::time::Duration,
    what: &str,
    check: impl FnMut() -> Option<T>,
) -> T {
    poll_until_explained(deadline, what, check, String::new)
}

/// Like [`poll_until`], adding `explain()` (logs, say) to the failure.
pub fn poll_until_explained<T>(
    deadline: std::time::Duration,
    what: &str,
    mut check: impl FnMut() -> Option<T>,
    explain: impl Fn() -> String,
) -> T {
    let start = std::time::Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            start.elapsed() < deadline,
            "gave up after {deadline:?} waiting for {what}\n{}",
            explain()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
