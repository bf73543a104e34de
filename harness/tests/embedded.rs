//! Embedded mode: the same scenarios through `pipelines run`, all three components in one
//! process over the in-memory broker, with real git and real terraform.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: fail loudly.

use std::collections::BTreeMap;
use std::time::Duration;

use harness::process::{self, Finished};
use harness::require_terraform;
use harness::scenario::{Fixture, UNITS, expected_output};

fn run(fixture: &Fixture, base: &str, head: &str, event: &str, with_config: bool) -> Finished {
    // A deployment's configuration, sender checks included: in one process there are no
    // broker users, and embedded mode must not refuse its own events for want of one.
    let config = fixture.config_with(
        config::DEFAULT_BROKER_URL,
        "orchestrator_users = [\"pipelines-orchestrator\"]\ndeploy_orchestrator_users = [\"pipelines-orchestrator-deploy\"]\nexecutor_users = \"pipelines-executor-{account}-{role}\"\n",
    );
    let mut extra = vec!["--repo-name", "infra"];
    if with_config {
        extra.extend(["--config", config.to_str().unwrap()]);
    }
    process::run(
        fixture.pipelines_on_range("run", base, head, event, &extra),
        Duration::from_secs(300),
    )
}

#[test]
fn embedded_push_pull_request_and_push_behave_as_the_distributed_system_does() {
    require_terraform();
    let fixture = Fixture::new();

    let first = run(&fixture, &fixture.c0, &fixture.c1, "push", true);
    fixture.check_first_push(&first);
    assert!(
        first
            .stderr
            .contains(&format!("[{0}/{0}] succeeded", UNITS.len())),
        "progress per unit: {}",
        first.stderr
    );
    // In one process there are no broker users to check: no advice to set the checks.
    assert!(
        !first.stderr.contains("accepted from any"),
        "{}",
        first.stderr
    );

    let before = fixture.state_fingerprint();
    let plan = run(&fixture, &fixture.c1, &fixture.c2, "pull-request", true);
    fixture.check_pull_request(&plan, &before);

    let second = run(&fixture, &fixture.c1, &fixture.c2, "push", true);
    fixture.check_second_push(&second);
}

#[test]
fn embedded_failure_exits_1_skips_dependents_and_applies_the_rest() {
    require_terraform();
    let fixture = Fixture::with_broken_unit("dev/cache");
    let broken = run(&fixture, &fixture.c0, &fixture.c1, "push", true);
    fixture.check_broken_push(&broken, "dev/cache");
}

#[test]
fn without_a_config_one_default_account_owns_every_unit() {
    require_terraform();
    let fixture = Fixture::new();
    let first = run(&fixture, &fixture.c0, &fixture.c1, "push", false);
    assert_eq!(first.code(), Some(0), "{}", first.transcript());
    fixture.assert_all_applied_in_order(&BTreeMap::new());
    let rows = harness::summary_rows(&first.stdout);
    assert!(
        rows.values().all(|(_, account, _)| account == "default"),
        "{}",
        first.stdout
    );
    assert_eq!(
        fixture.output_of("prod/monitoring"),
        Some(expected_output("prod/monitoring", &BTreeMap::new()))
    );
}

/// The plans `pipelines run` starts run on this machine, where the page would take the proxy
/// header from any local process as a signed-in user's word: refused before anything runs.
#[test]
fn embedded_web_refuses_a_proxy_header() {
    let fixture = Fixture::new();
    let config = fixture.config_with(
        config::DEFAULT_BROKER_URL,
        "\n[web]\nproxy_header = \"X-Forwarded-Email\"\n",
    );
    let extra = [
        "--repo-name",
        "infra",
        "--config",
        config.to_str().unwrap(),
        "--web",
        "127.0.0.1:0",
    ];
    let refused = process::run(
        fixture.pipelines_on_range("run", &fixture.c0, &fixture.c1, "push", &extra),
        Duration::from_secs(300),
    );
    assert_eq!(refused.code(), Some(2), "{}", refused.transcript());
    assert!(
        refused.stderr.contains(
            "config key `web.proxy_header`: `pipelines run --web` runs plans on this machine"
        ),
        "{}",
        refused.stderr
    );
    assert_eq!(
        fixture.output_of("dev/network"),
        None,
        "nothing was applied"
    );
}
