//! The walking skeleton over the real RabbitMQ: a dispatcher and two executors per account,
//! each a separate OS process started from the built binary, driven by `orchestrate --wait`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: fail loudly.

use std::collections::BTreeMap;
use std::time::Duration;

use harness::deployment::Deployment;
use harness::process::{self, Finished};
use harness::rabbit::{self, Vhost};
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
