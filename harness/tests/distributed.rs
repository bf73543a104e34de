//! The walking skeleton over the real RabbitMQ: a dispatcher and two executors per account,
//! each a separate OS process started from the built binary, driven by `orchestrate --wait`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: fail loudly.

use std::collections::BTreeMap;
use std::time::Duration;

use harness::deployment::Deployment;
use harness::process::{self, Finished};
use harness::rabbit::{self, Vhost};
use harness::sandbox::Sandbox;
use harness::scenario::Fixture;
use harness::{poll_until, require_terraform};

const RUN_DEADLINE: Duration = Duration::from_secs(300);

/// A dispatcher and `executors_per_account` executors for each of the two accounts.
fn deploy(fixture: &Fixture, vhost: &Vhost, executors_per_account: usize) -> Deployment {
    let config = fixture.config(&vhost.url);
    Deployment::start(
        fixture.path(),
        &config,
        &[
            ("dev", executors_per_account),
            ("prod", executors_per_account),
        ],
    )
}

fn orchestrate(
    fixture: &Fixture,
    vhost: &Vhost,
    base: &str,
    head: &str,
    event: &str,
    extra: &[&str],
) -> Finished {
    let mut args = vec![
        "--repo-name",
        "infra",
        "--broker",
        &vhost.url,
        "--wait",
        "--wait-timeout",
        "280",
    ];
    args.extend_from_slice(extra);
    process::run(
        fixture.pipelines_on_range("orchestrate", base, head, event, &args),
        RUN_DEADLINE,
    )
}

#[test]
fn a_push_applies_every_unit_in_order_a_pull_request_plans_and_a_second_push_applies_and_destroys()
{
    require_terraform();
    let vhost = rabbit::vhost();
    let fixture = Fixture::new();
    let mut deployment = deploy(&fixture, &vhost, 2);

    let first = orchestrate(&fixture, &vhost, &fixture.c0, &fixture.c1, "push", &[]);
    fixture.check_first_push(&first);
    // Over RabbitMQ without sender checks in its configuration, the dispatcher says so.
    let log = deployment.dispatcher_log();
    assert!(
        log.contains("set dispatcher.orchestrator_users")
            && log.contains("set dispatcher.executor_users"),
        "{log}"
    );

    let before = fixture.state_fingerprint();
    let plan = orchestrate(
        &fixture,
        &vhost,
        &fixture.c1,
        &fixture.c2,
        "pull-request",
        &["--pr", "7"],
    );
    fixture.check_pull_request(&plan, &before);

    let second = orchestrate(&fixture, &vhost, &fixture.c1, &fixture.c2, "push", &[]);
    fixture.check_second_push(&second);
    deployment.assert_running();
}

#[test]
fn a_unit_with_invalid_hcl_fails_the_run_skips_its_dependents_and_the_rest_is_applied() {
    require_terraform();
    let vhost = rabbit::vhost();
    let fixture = Fixture::with_broken_unit("dev/database");
    let mut deployment = deploy(&fixture, &vhost, 1);

    let run = orchestrate(&fixture, &vhost, &fixture.c0, &fixture.c1, "push", &[]);
    fixture.check_broken_push(&run, "dev/database");
    deployment.assert_running();
}

/// The dispatcher holds its batches' acks to send several together, never for long: once a
/// run is over and nothing more comes, every message it took is settled.
#[test]
fn once_a_run_is_over_and_nothing_more_comes_the_dispatcher_has_settled_every_message() {
    require_terraform();
    let vhost = rabbit::vhost();
    let fixture = Fixture::new();
    let mut deployment = deploy(&fixture, &vhost, 1);

    let first = orchestrate(&fixture, &vhost, &fixture.c0, &fixture.c1, "push", &[]);
    fixture.check_first_push(&first);

    // Queue statistics lag behind the queue itself: poll.
    poll_until(
        Duration::from_secs(30),
        "the dispatcher's queues to hold nothing ready or unacked",
        || {
            let messages: BTreeMap<String, u64> =
                rabbit::queue_messages(&vhost).into_iter().collect();
            [
                "pipelines.changes",
                "pipelines.job-events",
                "pipelines.claims",
            ]
            .iter()
            .all(|queue| messages.get(*queue) == Some(&0))
            .then_some(())
        },
    );
    deployment.assert_running();
}

#[test]
fn poison_and_rejected_change_events_are_dead_lettered_with_a_reason_and_the_dispatcher_goes_on() {
    let vhost = rabbit::vhost();
    let fixture = Fixture::new();
    let mut deployment = deploy(&fixture, &vhost, 0);

    // Garbage straight onto the changes exchange.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let broker = broker::Broker::connect(&vhost.url, "test-poison")
            .await
            .unwrap();
        let headers = broker::Headers::new();
        let garbage = broker::Outgoing::new(b"\x01not a change event", "poison", &headers);
        broker
            .publish(broker::Route::Changes, garbage)
            .await
            .unwrap();
        broker.close().await;
    });

    // An event for a repository the policy does not know: rejected, with the reason.
    let extra = [
        "--repo-name",
        "not-configured",
        "--broker",
        &vhost.url,
        "--wait",
    ];
    let command =
        fixture.pipelines_on_range("orchestrate", &fixture.c0, &fixture.c1, "push", &extra);
    let rejected = process::run(command, RUN_DEADLINE);
    assert_eq!(rejected.code(), Some(1), "{}", rejected.transcript());
    assert!(
        rejected
            .stdout
            .contains("rejected: unknown repository \"not-configured\""),
        "{}",
        rejected.transcript()
    );

    // The dispatcher still works: an empty range is a run with nothing to do.
    let empty = orchestrate(&fixture, &vhost, &fixture.c1, &fixture.c1, "push", &[]);
    assert_eq!(empty.code(), Some(0), "{}", empty.transcript());

    // Queue statistics lag behind the queue itself: poll.
    poll_until(
        Duration::from_secs(30),
        "both bad events in dead.pipelines.changes",
        || {
            let depths: BTreeMap<String, u64> = rabbit::queue_depths(&vhost).into_iter().collect();
            (depths.get("dead.pipelines.changes") == Some(&2)
                && depths.get("pipelines.changes") == Some(&0))
            .then_some(())
        },
    );
    let log = deployment.dispatcher_log();
    assert!(log.contains("undecodable change event"), "{log}");
    deployment.assert_running();
}

/// `THP_enabled` of a process: 0 once it asked the kernel for no transparent huge pages.
fn thp_enabled(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("THP_enabled:"))
        .unwrap_or_else(|| panic!("no THP_enabled in /proc/{pid}/status (Linux 5.0 or later)"))
        .trim()
        .to_owned()
}

/// Every `thp = "…"` a plan printed into the job logs under `dir`.
fn printed_thp(dir: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if entry.file_type().unwrap().is_dir() {
            found.extend(printed_thp(&path));
        } else if path.extension().is_some_and(|ext| ext == "log") {
            let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
            found.extend(text.lines().filter_map(|line| {
                let value = line.split_once("thp = \"")?.1;
                Some(value.trim_end_matches('"').to_owned())
            }));
        }
    }
    found
}

/// The services keep their memory in 4 KiB pages (with transparent huge pages, every 2 MiB
/// region mimalloc touched stayed resident whole: BENCHMARKS.md, "Memory"), and the tools a
/// worker starts get the host's setting back.
#[test]
fn the_services_run_without_huge_pages_and_the_tools_they_start_with_the_hosts_setting() {
    require_terraform();
    let vhost = rabbit::vhost();
    let sandbox = Sandbox::new();
    let config = sandbox.write_config(&vhost.url, &[("dev", "dev/**")], "");
    let repo = &sandbox.repo;
    repo.write("README.md", "# infrastructure\n");
    let c0 = repo.commit("c0: readme");
    // The plan reads its own process's flag.
    repo.write(
        "dev/thp/main.tf",
        "output \"thp\" {\n  value = regex(\"THP_enabled:\\\\s*(\\\\d)\", file(\"/proc/self/status\"))[0]\n}\n",
    );
    repo.write("dev/thp/pipelines.hcl", "dependencies = []\n");
    let c1 = repo.commit("c1: a unit that prints its THP_enabled");
    let mut deployment = Deployment::start(sandbox.path(), &config, &[("dev", 1)]);
    // A process just spawned has its parent's flag until its own code runs: poll.
    for (service, pid) in [
        ("the dispatcher", deployment.dispatcher_pid()),
        ("the plan worker", deployment.executor_pid("dev-plan-1")),
    ] {
        poll_until(
            Duration::from_secs(60),
            &format!("{service} to run without transparent huge pages"),
            || (thp_enabled(pid) == "0").then_some(()),
        );
    }
    // This test runs as the host has it (1 with the kernel's THP support and no flag set).
    let host = thp_enabled(std::process::id());

    let run = process::run(
        sandbox.pipelines_on_range(
            "orchestrate",
            &c0,
            &c1,
            "pull-request",
            &[
                "--pr",
                "1",
                "--repo-name",
                "infra",
                "--broker",
                &vhost.url,
                "--wait",
            ],
        ),
        RUN_DEADLINE,
    );
    assert_eq!(run.code(), Some(0), "{}", run.transcript());
    let printed = printed_thp(sandbox.path());
    assert!(
        !printed.is_empty() && printed.iter().all(|value| *value == host),
        "terraform, started by the plan worker, runs as the host has it ({host}): {printed:?}"
    );
    deployment.assert_running();
}
