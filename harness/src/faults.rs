//! Fault-injection helpers shared by `tests/faults.rs`, `tests/fault_broker_restart.rs` and
//! `tests/cluster.rs`: a seeded random layered DAG of logging units, the end-of-scenario check
//! of every unit's final state and apply history, and a burst of runs from concurrent
//! orchestrators.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use uuid::Uuid;

use crate::applies::{Apply, ApplyLog, Behaviour, Units};
use crate::deployment::Deployment;
use crate::rabbit::Vhost;
use crate::sandbox::Sandbox;

/// How many times to repeat a scenario: once, or `long` times in the long profile.
pub fn rounds(long: usize) -> usize {
    if long_profile() { long } else { 1 }
}

/// Two accounts (`dev/**`, `prod/**`) with two workers each, and leases short enough (10 s)
/// that a killed worker's job is taken over quickly.
pub fn two_account_deployment(sandbox: &Sandbox, vhost: &Vhost) -> Deployment {
    let config = sandbox.write_config(
        &vhost.url,
        &[("dev", "dev/**"), ("prod", "prod/**")],
        "lease_seconds = 10\n",
    );
    Deployment::start(sandbox.path(), &config, &[("dev", 2), ("prod", 2)])
}

pub fn long_profile() -> bool {
    std::env::var("PIPELINES_FAULT_PROFILE").is_ok_and(|p| p == "long")
}

/// A small PRNG (xorshift64*): reproducible from the printed seed, no dependency.
#[derive(Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn seeded() -> Rng {
        let seed = std::env::var("PIPELINES_FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        // Printed so that a failure can be replayed; the test harness shows it on failure.
        #[allow(clippy::print_stdout)]
        {
            println!("PIPELINES_FAULT_SEED={seed}");
        }
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

pub fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// A random layered DAG over two accounts: `layers` layers of `width` units, each unit after
/// layer 0 depending on one or two units of the layer before. Unit names are `dev/l<layer>u<i>`
/// or `prod/...`, alternating.
pub fn random_layout(rng: &mut Rng, layers: usize, width: usize) -> Vec<(String, Vec<String>)> {
    let mut layout: Vec<(String, Vec<String>)> = Vec::new();
    for layer in 0..layers {
        for i in 0..width {
            let account = if (layer + i) % 2 == 0 { "dev" } else { "prod" };
            let unit = format!("{account}/l{layer}u{i}");
            let mut dependencies = Vec::new();
            if layer > 0 {
                let previous = &layout[(layer - 1) * width..layer * width];
                for _ in 0..1 + rng.below(2) {
                    let dependency = previous[rng.below(width)].0.clone();
                    if !dependencies.contains(&dependency) {
                        dependencies.push(dependency);
                    }
                }
            }
            layout.push((unit, dependencies));
        }
    }
    layout
}

/// Each unit's final state is its applied version, its last apply completed, and it was applied
/// after its dependencies completed. A unit is applied more than once only across a disruption
/// (a worker killed, the broker restarted) that happened after the earlier apply began and
/// before the later one; applies of one unit never overlap.
pub fn assert_final_states(
    log: &ApplyLog,
    state_dir: &Path,
    layout: &[(String, Vec<String>)],
    disruptions: &[u128],
) {
    let by_unit = log.by_unit();
    let applies_of = |unit: &str| -> &Vec<Apply> {
        by_unit
            .get(unit)
            .unwrap_or_else(|| panic!("{unit} was never applied:\n{}", log.text()))
    };
    let first_completed = |unit: &str| -> u128 {
        applies_of(unit)
            .iter()
            .find_map(|a| a.end)
            .unwrap_or_else(|| panic!("{unit} never completed an apply:\n{}", log.text()))
    };
    for (unit, dependencies) in layout {
        let applies = applies_of(unit);
        assert!(
            applies.last().unwrap().end.is_some(),
            "{unit}'s last apply did not complete:\n{}",
            log.text()
        );
        for pair in applies.windows(2) {
            if let Some(end) = pair[0].end {
                assert!(
                    end < pair[1].start,
                    "applies of {unit} overlap:\n{}",
                    log.text()
                );
            }
            assert!(
                disruptions
                    .iter()
                    .any(|at| pair[0].start < *at && *at < pair[1].start),
                "{unit} was applied again with no disruption in between:\n{}",
                log.text()
            );
        }
        for dependency in dependencies {
            assert!(
                first_completed(dependency) < applies[0].start,
                "{unit} started before {dependency} ended:\n{}",
                log.text()
            );
        }
        let state = std::fs::read_to_string(state_dir.join(format!("{unit}.tfstate")))
            .unwrap_or_else(|err| panic!("{unit} has no state: {err}"));
        let state: serde_json::Value = serde_json::from_str(&state).unwrap();
        let version = &state["resources"][0]["instances"][0]["attributes"]["triggers"]["version"];
        assert_eq!(version, "1", "{unit}'s state: {state}");
    }
}

pub fn as_refs(layout: &[(String, Vec<String>)]) -> Vec<(&str, Vec<&str>)> {
    layout
        .iter()
        .map(|(u, d)| (u.as_str(), d.iter().map(String::as_str).collect()))
        .collect()
}

/// The commits of a layout whose units each sleep `seconds` in their apply.
pub fn commit_layout(
    units: &Units<'_>,
    layout: &[(String, Vec<String>)],
    seconds: u32,
) -> (String, String) {
    let c0 = units.readme_only();
    let refs = as_refs(layout);
    let specs: Vec<(&str, &[&str], Behaviour)> = refs
        .iter()
        .map(|(u, d)| (*u, d.as_slice(), Behaviour::Succeed { seconds }))
        .collect();
    let c1 = units.commit("c1: the layout", 1, &specs);
    (c0, c1)
}

/// Orchestrator processes started at once in a burst (a thousand at once would need
/// gigabytes for nothing).
const WAVE: usize = 100;

/// A README commit, then a commit adding three units (`dev/u0..2`) with no dependencies:
/// `(base, head)`.
pub fn three_noop_units(sandbox: &Sandbox) -> (String, String) {
    let repo = &sandbox.repo;
    repo.write("README.md", "# infrastructure\n");
    let c0 = repo.commit("c0");
    for i in 0..3 {
        repo.write(&format!("dev/u{i}/pipelines.hcl"), "dependencies = []\n");
    }
    let c1 = repo.commit("c1: three units");
    (c0, c1)
}

/// What a burst of runs came to.
#[derive(Debug)]
pub struct Burst {
    pub submitted: usize,
    pub confirmed: usize,
    pub finished: usize,
    pub lost: usize,
    pub duplicates: usize,
    pub extra_runs: usize,
    pub not_succeeded: Vec<(Uuid, String)>,
}

impl Burst {
    /// Every confirmed run finished and succeeded, and no other run appeared.
    pub fn assert_lost_none(&self) {
        assert_eq!(self.lost, 0, "{self:?}");
        assert_eq!(
            self.extra_runs, 0,
            "a run appeared that no orchestrator submitted"
        );
        assert!(self.not_succeeded.is_empty(), "{self:?}");
    }
}

/// Submits `runs` pull-request runs of `range` from as many orchestrator processes, in waves
/// of up to 100 started before any is waited for, each to one of `brokers` in turn; then waits
/// for every confirmed run to end, reading the dispatcher's database.
pub fn burst_of_runs(
    sandbox: &Sandbox,
    deployment: &Deployment,
    range: (&str, &str),
    brokers: &[String],
    runs: usize,
) -> Burst {
    let mut confirmed = Vec::new();
    let mut failed = Vec::new();
    for wave in 0..runs.div_ceil(WAVE) {
        let children: Vec<std::process::Child> = (wave * WAVE..runs.min((wave + 1) * WAVE))
            .map(|i| {
                let mut command = sandbox.pipelines_on_range(
                    "orchestrate",
                    range.0,
                    range.1,
                    "pull-request",
                    &[
                        "--repo-name",
                        "infra",
                        "--broker",
                        &brokers[i % brokers.len()],
                        "--format",
                        "json",
                    ],
                );
                command
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for child in children {
            let output = child.wait_with_output().unwrap();
            let stdout = String::from_utf8_lossy(&output.stdout);
            match serde_json::from_str::<serde_json::Value>(&stdout)
                .ok()
                .and_then(|v| v["run_id"].as_str().map(str::to_owned))
            {
                Some(id) if output.status.success() => confirmed.push(id.parse::<Uuid>().unwrap()),
                _ => failed.push(String::from_utf8_lossy(&output.stderr).into_owned()),
            }
        }
    }
    assert!(failed.is_empty(), "orchestrators failed: {failed:#?}");

    let finals = crate::poll_until(Duration::from_secs(600), "every run to finish", || {
        let store = dispatcher::store::Store::connect_read_only(&sandbox.store_location()).ok()?;
        let summaries = store.list_runs(runs * 2).ok()?;
        let finished: BTreeMap<Uuid, String> = summaries
            .iter()
            .filter(|s| s.state != "running")
            .map(|s| (s.run_id, s.state.to_string()))
            .collect();
        (confirmed.iter().all(|id| finished.contains_key(id))).then_some(finished)
    });
    Burst {
        submitted: runs,
        confirmed: confirmed.len(),
        finished: finals.len(),
        lost: confirmed
            .iter()
            .filter(|id| !finals.contains_key(id))
            .count(),
        duplicates: deployment
            .dispatcher_log()
            .matches("Change event redelivered")
            .count(),
        extra_runs: finals.len().saturating_sub(confirmed.len()),
        not_succeeded: finals
            .into_iter()
            .filter(|(_, state)| state != "succeeded")
            .collect(),
    }
}
