//! Running one job's IaC steps in a unit directory: `init`, `plan -out`, `show -json`, and
//! `apply` of the saved plan for applies and destroys.
//!
//! The step list is pure ([`steps`]); [`execute`] is the process edge. This module is the only
//! place in the workspace that starts terraform, tofu or terragrunt.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use proto_types::{Action, JobStatus, ResourceCounts};
use serde::Deserialize;
use tokio::process::Command;

use crate::output::BoundedOutput;

/// How long to wait for a state lock held by someone else (a previous attempt, a human)
/// before failing.
const LOCK_TIMEOUT: &str = "-lock-timeout=5m";
const PLAN_FILE: &str = "tfplan";

/// Which program runs a unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Tool {
    Terragrunt,
    /// `terraform` or `tofu`, by name or path.
    Terraform(String),
}

impl Tool {
    fn program(&self) -> &str {
        match self {
            Tool::Terragrunt => "terragrunt",
            Tool::Terraform(binary) => binary,
        }
    }
}

/// Picks the tool for a checked-out unit directory.
pub(crate) fn tool_for(unit_dir: &Path, tf_binary: Option<&str>) -> Result<Tool, String> {
    if unit_dir.join("terragrunt.hcl").is_file() {
        return Ok(Tool::Terragrunt);
    }
    if let Some(binary) = tf_binary {
        return Ok(Tool::Terraform(binary.to_owned()));
    }
    ["tofu", "terraform"]
        .into_iter()
        .find(|name| on_path(name).is_some())
        .map(|name| Tool::Terraform(name.to_owned()))
        .ok_or_else(|| "neither tofu nor terraform is on PATH (set executor.tf_binary)".to_owned())
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

/// One invocation of the tool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Step {
    pub(crate) args: Vec<&'static str>,
    /// Exit codes that mean success (`plan -detailed-exitcode` exits 2 when there are changes).
    pub(crate) ok_codes: &'static [i32],
    /// Stdout is data (the JSON plan), not output for people.
    pub(crate) captures_stdout: bool,
}

/// The steps of an action. Pure.
pub(crate) fn steps(action: Action) -> Vec<Step> {
    let mut plan = vec![
        "plan",
        "-input=false",
        "-no-color",
        LOCK_TIMEOUT,
        "-detailed-exitcode",
    ];
    if action.is_destroy() {
        plan.push("-destroy");
    }
    plan.push("-out=tfplan");
    let mut steps = vec![
        Step {
            args: vec!["init", "-input=false", "-no-color"],
            ok_codes: &[0],
            captures_stdout: false,
        },
        Step {
            args: plan,
            ok_codes: &[0, 2],
            captures_stdout: false,
        },
        Step {
            args: vec!["show", "-json", "-no-color", PLAN_FILE],
            ok_codes: &[0],
            captures_stdout: true,
        },
    ];
    if action.mutates() {
        steps.push(Step {
            args: vec![
                "apply",
                "-input=false",
                "-no-color",
                LOCK_TIMEOUT,
                PLAN_FILE,
            ],
            ok_codes: &[0],
            captures_stdout: false,
        });
    }
    steps
}

/// What running the steps produced.
#[derive(Debug)]
pub(crate) struct StepsOutcome {
    pub(crate) status: JobStatus,
    pub(crate) exit_code: Option<i32>,
    pub(crate) resource_changes: Option<ResourceCounts>,
}

/// Runs the steps of `action` in `unit_dir`, stopping at the first failure.
pub(crate) async fn execute(
    tool: &Tool,
    action: Action,
    unit_dir: &Path,
    output: &mut BoundedOutput,
) -> StepsOutcome {
    let mut outcome = StepsOutcome {
        status: JobStatus::Succeeded,
        exit_code: Some(0),
        resource_changes: None,
    };
    for step in steps(action) {
        output.push_str(&format!("$ {} {}\n", tool.program(), step.args.join(" ")));
        let result = if step.captures_stdout {
            run_capturing(tool.program(), &step.args, unit_dir, output).await
        } else {
            run_merged(tool.program(), &step.args, unit_dir, output)
                .await
                .map(|code| (code, Vec::new()))
        };
        let (code, stdout) = match result {
            Ok(result) => result,
            Err(err) => {
                output.push_str(&format!("cannot run {}: {err}\n", tool.program()));
                return StepsOutcome {
                    status: JobStatus::Failed,
                    exit_code: None,
                    resource_changes: None,
                };
            }
        };
        if !code.is_some_and(|c| step.ok_codes.contains(&c)) {
            outcome.status = JobStatus::Failed;
            outcome.exit_code = code;
            return outcome;
        }
        if step.captures_stdout {
            match resource_counts(&stdout) {
                Ok(counts) => outcome.resource_changes = Some(counts),
                Err(err) => output.push_str(&format!("cannot read the JSON plan: {err}\n")),
            }
        }
    }
    outcome
}

fn command(program: &str, args: &[&str], dir: &Path) -> Command {
    let mut command = Command::new(program);
    command
        .args(args)
        .current_dir(dir)
        // The child inherits the worker's environment (TF_* settings, proxies, plugin cache).
        .env("TF_IN_AUTOMATION", "1")
        .env("TF_INPUT", "0")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

/// Runs with stdout and stderr merged into one pipe, so the output keeps its real order.
async fn run_merged(
    program: &str,
    args: &[&str],
    dir: &Path,
    output: &mut BoundedOutput,
) -> std::io::Result<Option<i32>> {
    let (mut reader, writer) = std::io::pipe()?;
    let mut command = command(program, args, dir);
    command.stdout(writer.try_clone()?).stderr(writer);
    let mut child = command.spawn()?;
    // Drop our copies of the pipe's write end, or reading would never see end-of-file.
    drop(command);
    let mut collected = std::mem::take(output);
    let reading = tokio::task::spawn_blocking(move || {
        let mut buffer = [0_u8; 8192];
        loop {
            match reader.read(&mut buffer) {
                Ok(0) | Err(_) => return collected,
                Ok(n) => collected.push(&buffer[..n]),
            }
        }
    });
    let status = child.wait().await?;
    *output = reading.await.map_err(std::io::Error::other)?;
    Ok(status.code())
}

/// Runs with stdout captured as data and stderr appended to the output.
async fn run_capturing(
    program: &str,
    args: &[&str],
    dir: &Path,
    output: &mut BoundedOutput,
) -> std::io::Result<(Option<i32>, Vec<u8>)> {
    let result = command(program, args, dir).output().await?;
    output.push(&result.stderr);
    Ok((result.status.code(), result.stdout))
}

#[derive(Deserialize)]
struct JsonPlan {
    #[serde(default)]
    resource_changes: Vec<JsonResourceChange>,
}

#[derive(Deserialize)]
struct JsonResourceChange {
    change: JsonChange,
}

#[derive(Deserialize)]
struct JsonChange {
    actions: Vec<String>,
}

/// Counts resources to add, change and destroy from `show -json` of a saved plan. A replace
/// (`["delete","create"]` or `["create","delete"]`) counts as one add and one destroy, as
/// Terraform's own summary does.
pub(crate) fn resource_counts(json: &[u8]) -> Result<ResourceCounts, serde_json::Error> {
    let plan: JsonPlan = serde_json::from_slice(json)?;
    let mut counts = ResourceCounts::default();
    for change in plan.resource_changes {
        for action in &change.change.actions {
            match action.as_str() {
                "create" => counts.add += 1,
                "update" => counts.change += 1,
                "delete" => counts.destroy += 1,
                _ => {}
            }
        }
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_never_apply_and_applies_apply_the_saved_plan() {
        let args = |action| {
            steps(action)
                .into_iter()
                .map(|s| s.args.join(" "))
                .collect::<Vec<_>>()
        };
        let plan = args(Action::Plan);
        assert_eq!(plan.len(), 3);
        assert!(plan[1].ends_with("-detailed-exitcode -out=tfplan"));
        assert!(args(Action::PlanDestroy)[1].contains("-destroy"));
        let destroy = args(Action::Destroy);
        assert!(destroy[1].contains("-destroy"));
        assert_eq!(
            destroy[3],
            "apply -input=false -no-color -lock-timeout=5m tfplan"
        );
        assert_eq!(args(Action::Apply).len(), 4);
    }

    #[test]
    fn resource_counts_come_from_plan_actions() {
        let json = br#"{"format_version":"1.2","resource_changes":[
            {"address":"a","change":{"actions":["create"]}},
            {"address":"b","change":{"actions":["update"]}},
            {"address":"c","change":{"actions":["delete","create"]}},
            {"address":"d","change":{"actions":["no-op"]}},
            {"address":"e","change":{"actions":["delete"]}}]}"#;
        assert_eq!(
            resource_counts(json).unwrap(),
            ResourceCounts {
                add: 2,
                change: 1,
                destroy: 2
            }
        );
        assert_eq!(
            resource_counts(br#"{"format_version":"1.2"}"#).unwrap(),
            ResourceCounts::default()
        );
        assert!(resource_counts(b"not json").is_err());
    }

    #[test]
    fn terragrunt_units_run_with_terragrunt() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("terragrunt.hcl"), "").unwrap();
        assert_eq!(tool_for(dir.path(), Some("tofu")), Ok(Tool::Terragrunt));
        let plain = tempfile::tempdir().unwrap();
        assert_eq!(
            tool_for(plain.path(), Some("/opt/tofu")),
            Ok(Tool::Terraform("/opt/tofu".into()))
        );
    }
}
