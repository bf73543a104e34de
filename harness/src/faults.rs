//! Fault-injection helpers shared by `tests/faults.rs` and `tests/fault_broker_restart.rs`: a
//! seeded random layered DAG of logging units, and the end-of-scenario check of every unit's
//! final state and apply history.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

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
