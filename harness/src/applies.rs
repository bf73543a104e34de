//! Units with a real resource: a `null_resource` whose `local-exec` appends to a shared log when
//! its apply starts and when it ends, so that tests can prove which applies ran, in what order,
//! and that none overlapped. Needs the null provider ([`crate::require_null_provider`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::sandbox::Sandbox;

/// What a unit's provisioner does besides logging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Takes `seconds`, then succeeds.
    Succeed { seconds: u32 },
    /// Fails its first apply with a message the default retry patterns call transient (a state
    /// lock), then succeeds.
    FailOnceWithStateLock,
    /// Fails every apply with a message no retry pattern matches.
    AlwaysFail,
    /// Its first apply takes `seconds` (long enough to be interrupted); later ones one second.
    SlowOnce { seconds: u32 },
    /// Prints a line every half second until its gate file ([`gate_path`]) exists: a job that
    /// is visibly running, with output, for as long as a test wants.
    WaitForGate,
}

/// The file that lets a [`Behaviour::WaitForGate`] unit's apply end.
pub fn gate_path(state_dir: &Path, unit: &str) -> PathBuf {
    state_dir.join(format!("{}.gate", unit.replace('/', "_")))
}

/// `main.tf` of a unit at `version`, its state in `state_dir`, logging to `log`. The resource is
/// replaced on every apply (a `timestamp()` trigger), so every apply that runs, even a repeated
/// one with nothing new to do, shows up in the log.
pub fn null_unit_tf(
    unit: &str,
    version: u32,
    state_dir: &Path,
    log: &Path,
    behaviour: Behaviour,
) -> String {
    let state = state_dir.display();
    let log = log.display();
    let marker = state_dir.join(format!("{}.failed-once", unit.replace('/', "_")));
    let marker = marker.display();
    let work = match behaviour {
        Behaviour::Succeed { seconds } => format!("sleep {seconds}"),
        Behaviour::FailOnceWithStateLock => format!(
            "if [ ! -e {marker} ]; then touch {marker}; echo 'Error acquiring the state lock (simulated)' >&2; exit 1; fi"
        ),
        Behaviour::AlwaysFail => {
            "echo 'Error: permanent failure (simulated)' >&2; exit 1".to_owned()
        }
        Behaviour::SlowOnce { seconds } => {
            format!("if [ ! -e {marker} ]; then touch {marker}; sleep {seconds}; else sleep 1; fi")
        }
        Behaviour::WaitForGate => {
            let gate = gate_path(state_dir, unit);
            let gate = gate.display();
            format!(
                "{{ echo 'waiting for the gate of {unit}'; i=0; while [ ! -e {gate} ]; do i=$((i+1)); echo \"still waiting: tick $i\"; sleep 0.5; done; echo 'the gate of {unit} opened'; }}"
            )
        }
    };
    // `$(...)` is the shell's; HCL only interpolates `${...}`.
    let command = format!(
        "echo \"start {unit} {version} $(date +%s%N)\" >> {log} && {work} && echo \"end {unit} {version} $(date +%s%N)\" >> {log}"
    );
    let command = command.replace('\\', "\\\\").replace('"', "\\\"");
    format!(
        "terraform {{\n  required_providers {{\n    null = {{\n      source  = \"hashicorp/null\"\n      version = \"2.1.2\"\n    }}\n  }}\n  \
         backend \"local\" {{\n    path = \"{state}/{unit}.tfstate\"\n  }}\n}}\n\n\
         resource \"null_resource\" \"apply\" {{\n  triggers = {{\n    version = \"{version}\"\n    always  = timestamp()\n  }}\n\n  \
         provisioner \"local-exec\" {{\n    command = \"{command}\"\n  }}\n}}\n"
    )
}

/// `main.tf` of a unit that shows what credentials its tool got. Plans print its `identity`
/// and `secret` outputs (from `TF_VAR_identity` and `TF_VAR_secret`); applies also append the
/// credential variables to `seen` (a file outside any output) and echo the secrets into the
/// output, where they must arrive redacted.
pub fn probe_unit_tf(unit: &str, state_dir: &Path, seen: &Path) -> String {
    probe_unit_tf_printing(unit, state_dir, seen, "")
}

/// [`probe_unit_tf`] whose apply also runs `also` (shell, no `$`) after printing its secret.
pub fn probe_unit_tf_printing(unit: &str, state_dir: &Path, seen: &Path, also: &str) -> String {
    let state = state_dir.display();
    let seen = seen.display();
    let command = format!(
        "echo \"{unit} $TF_VAR_identity $TF_VAR_secret $AWS_ACCESS_KEY_ID $AWS_SECRET_ACCESS_KEY\" >> {seen}; \
         echo \"the secret is $TF_VAR_secret, the key is $AWS_SECRET_ACCESS_KEY\"; {also}"
    );
    let command = command.replace('\\', "\\\\").replace('"', "\\\"");
    format!(
        "terraform {{\n  required_providers {{\n    null = {{\n      source  = \"hashicorp/null\"\n      version = \"2.1.2\"\n    }}\n  }}\n  \
         backend \"local\" {{\n    path = \"{state}/{unit}.tfstate\"\n  }}\n}}\n\n\
         variable \"identity\" {{\n  default = \"none\"\n}}\n\nvariable \"secret\" {{\n  default = \"\"\n}}\n\n\
         output \"identity\" {{\n  value = var.identity\n}}\n\noutput \"secret\" {{\n  value = var.secret\n}}\n\n\
         resource \"null_resource\" \"probe\" {{\n  triggers = {{\n    always = timestamp()\n  }}\n\n  \
         provisioner \"local-exec\" {{\n    command = \"{command}\"\n  }}\n}}\n"
    )
}

/// `pipelines.hcl` of a unit at `<unit>` depending on `dependencies` (repo-relative).
pub fn pipelines_hcl(unit: &str, dependencies: &[&str]) -> String {
    let up = "../".repeat(unit.split('/').count());
    let deps: Vec<String> = dependencies
        .iter()
        .map(|d| format!("\"{up}{d}\""))
        .collect();
    format!("dependencies = [{}]\n", deps.join(", "))
}

/// A repository of null-resource units whose applies log to `applies.log` in the sandbox.
#[derive(Debug)]
pub struct Units<'a> {
    sandbox: &'a Sandbox,
    pub log: ApplyLog,
}

impl<'a> Units<'a> {
    pub fn new(sandbox: &'a Sandbox) -> Units<'a> {
        sandbox.repo.write("README.md", "# infrastructure\n");
        Units {
            sandbox,
            log: ApplyLog::new(sandbox.path().join("applies.log")),
        }
    }

    /// Writes each `(unit, dependencies, behaviour)` at `version` and commits.
    pub fn commit(
        &self,
        message: &str,
        version: u32,
        units: &[(&str, &[&str], Behaviour)],
    ) -> String {
        let state = self.sandbox.state_dir();
        for (unit, dependencies, behaviour) in units {
            let tf = null_unit_tf(unit, version, &state, &self.log.path, *behaviour);
            self.sandbox.repo.write(&format!("{unit}/main.tf"), &tf);
            self.sandbox.repo.write(
                &format!("{unit}/pipelines.hcl"),
                &pipelines_hcl(unit, dependencies),
            );
        }
        self.sandbox.repo.commit(message)
    }

    pub fn readme_only(&self) -> String {
        self.sandbox.repo.commit("c0: readme")
    }
}

/// One apply as the log recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Apply {
    pub unit: String,
    pub version: u32,
    /// Nanoseconds since the epoch.
    pub start: u128,
    /// `None` when it never ended (failed or killed).
    pub end: Option<u128>,
}

/// The shared log of every apply.
#[derive(Debug, Clone)]
pub struct ApplyLog {
    pub path: PathBuf,
}

impl ApplyLog {
    pub fn new(path: PathBuf) -> ApplyLog {
        ApplyLog { path }
    }

    pub fn text(&self) -> String {
        std::fs::read_to_string(&self.path).unwrap_or_default()
    }

    /// Every apply, in the order they started.
    pub fn applies(&self) -> Vec<Apply> {
        let mut applies: Vec<Apply> = Vec::new();
        for line in self.text().lines() {
            let parts: Vec<&str> = line.split_whitespace().collect();
            let [kind, unit, version, at] = parts[..] else {
                panic!("malformed apply log line {line:?}");
            };
            let version: u32 = version.parse().unwrap();
            let at: u128 = at.parse().unwrap();
            match kind {
                "start" => applies.push(Apply {
                    unit: unit.to_owned(),
                    version,
                    start: at,
                    end: None,
                }),
                "end" => {
                    let open = applies
                        .iter_mut()
                        .rev()
                        .find(|a| a.unit == unit && a.version == version && a.end.is_none())
                        .unwrap_or_else(|| {
                            panic!(
                                "{line:?} ends an apply that never started:\n{}",
                                self.text()
                            )
                        });
                    open.end = Some(at);
                }
                other => panic!("unknown apply log entry {other:?}"),
            }
        }
        applies.sort_by_key(|a| a.start);
        applies
    }

    /// The applies of each unit, in start order.
    pub fn by_unit(&self) -> BTreeMap<String, Vec<Apply>> {
        let mut by_unit: BTreeMap<String, Vec<Apply>> = BTreeMap::new();
        for apply in self.applies() {
            by_unit.entry(apply.unit.clone()).or_default().push(apply);
        }
        by_unit
    }

    /// Fails unless two applies of one unit never ran at the same time.
    pub fn assert_no_overlap_per_unit(&self) {
        for (unit, applies) in self.by_unit() {
            for pair in applies.windows(2) {
                let end = pair[0]
                    .end
                    .unwrap_or_else(|| panic!("an apply of {unit} never ended:\n{}", self.text()));
                assert!(
                    end < pair[1].start,
                    "applies of {unit} overlap:\n{}",
                    self.text()
                );
            }
        }
    }

    /// Fails unless each of `units` was applied exactly once, and after its dependencies ended.
    pub fn assert_applied_once_in_order(&self, units: &[(&str, &[&str])]) {
        let by_unit = self.by_unit();
        for (unit, _) in units {
            let applies = by_unit.get(*unit).map_or(0, Vec::len);
            assert_eq!(
                applies,
                1,
                "{unit} applied {applies} times:\n{}",
                self.text()
            );
        }
        for (unit, dependencies) in units {
            let start = by_unit[*unit][0].start;
            for dependency in *dependencies {
                let end = by_unit[*dependency][0]
                    .end
                    .unwrap_or_else(|| panic!("{dependency} never finished"));
                assert!(
                    end < start,
                    "{unit} started before {dependency} ended:\n{}",
                    self.text()
                );
            }
        }
    }
}

/// A unit whose only resource is a `terraform_data` (Terraform's built-in provider) named
/// `name`, holding the HCL expression `input`, its state in the sandbox's state directory.
pub fn terraform_data_unit(sandbox: &Sandbox, unit: &str, name: &str, input: &str) {
    let state = sandbox.state_dir();
    let tf = format!(
        "terraform {{\n  backend \"local\" {{\n    path = \"{}/{unit}.tfstate\"\n  }}\n}}\n\n\
         resource \"terraform_data\" \"{name}\" {{\n  input = {input}\n}}\n",
        state.display()
    );
    sandbox.repo.write(&format!("{unit}/main.tf"), &tf);
    sandbox
        .repo
        .write(&format!("{unit}/pipelines.hcl"), &pipelines_hcl(unit, &[]));
}

/// Writes a policy set of one file, `<root>/policies/<name>/<name>.rego`; its directory.
pub fn policy_set(root: &Path, name: &str, rego: &str) -> String {
    let dir = root.join("policies").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.rego")), rego).unwrap();
    dir.display().to_string()
}
