//! Fault injection against the real RabbitMQ and the built binaries: components killed with
//! SIGKILL at random moments, poison on every queue, a job delivered twice, and a thousand-run
//! load. Every scenario ends by checking each unit's final state and each run's final status.
//!
//! The default profile is small. `PIPELINES_FAULT_PROFILE=long` repeats the kill scenario with
//! fresh random seeds and submits 1,000 runs; `PIPELINES_FAULT_SEED=N` replays one seed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // Test code: fail loudly, say what it did.

use std::collections::BTreeMap;

use broker::topology::DELIVERY_LIMIT;
use broker::{Broker, Headers, Outgoing, REASON_HEADER, Route};
use harness::applies::{Behaviour, Units};
use harness::deployment::Deployment;
use harness::faults::{
    Rng, as_refs, assert_final_states, commit_layout, long_profile, now_ns, random_layout, rounds,
    two_account_deployment,
};
use harness::poll_until;
use harness::process::Service;
use harness::rabbit::{self, Vhost};
use harness::runs::{DEADLINE, setup, status, wait_final};
use harness::sandbox::Sandbox;
use proto_types::ExecutorRole;
use uuid::Uuid;

/// The worker that holds `unit`'s job, from the dispatcher's database.
fn worker_of(sandbox: &Sandbox, run: Uuid, unit: &str) -> Option<String> {
    let detail = status(sandbox, run)?;
    let job = detail.jobs.iter().find(|j| j.unit == unit)?;
    (job.state == "running")
        .then(|| job.worker.clone())
        .flatten()
}

/// Submits with `orchestrate --wait` and kills the orchestrator with SIGKILL as soon as it
/// says the run is submitted; the run's id.
fn submit_and_kill_orchestrator(sandbox: &Sandbox, vhost: &Vhost, range: (&str, &str)) -> Uuid {
    let command = sandbox.pipelines_on_range(
        "orchestrate",
        range.0,
        range.1,
        "push",
        &["--repo-name", "infra", "--broker", &vhost.url, "--wait"],
    );
    let mut orchestrator = Service::start("orchestrator", command, &sandbox.dir("logs"));
    let run = poll_until(DEADLINE, "the orchestrator to submit", || {
        let log = orchestrator.log_text();
        let rest = log.split("Submitted run ").nth(1)?;
        rest.split_whitespace().next()?.parse::<Uuid>().ok()
    });
    orchestrator.kill();
    run
}

#[test]
fn sigkill_of_every_component_at_random_moments_loses_nothing() {
    let rounds = rounds(5);
    for round in 1..=rounds {
        println!("round {round} of {rounds}");
        kill_round();
    }
}

fn kill_round() {
    let mut rng = Rng::seeded();
    let (vhost, sandbox) = setup();
    let units = Units::new(&sandbox);
    const WIDTH: usize = 3;
    let layout = random_layout(&mut rng, 3, WIDTH);
    let (c0, c1) = commit_layout(&units, &layout, 2);
    let mut deployment = two_account_deployment(&sandbox, &vhost);

    // 1. The orchestrator, right after publishing: the run must go on without it.
    let run = submit_and_kill_orchestrator(&sandbox, &vhost, (&c0, &c1));

    // 2 and 3, in random order: the dispatcher once a random unit's apply ended, and an
    // executor in the middle of a random unit's apply.
    let mut kills = Vec::new();
    let mut replacements = 0;
    let dispatcher_first = rng.below(2) == 0;
    for step in 0..2 {
        if (step == 0) == dispatcher_first {
            // Going first, after a first-layer unit: later layers' applies are still to come
            // for the executor's kill to land in.
            let pool = if step == 0 {
                &layout[..WIDTH]
            } else {
                &layout[..]
            };
            let unit = &pool[rng.below(pool.len())].0;
            let milestone = format!("end {unit} ");
            poll_until(DEADLINE, &milestone, || {
                units.log.text().contains(&milestone).then_some(())
            });
            println!("kill -9 the dispatcher after {milestone}");
            deployment.kill_dispatcher();
            deployment.start_dispatcher();
        } else {
            // A unit whose apply has not started yet, so that the kill lands in the middle.
            let candidates: Vec<&String> = layout
                .iter()
                .map(|(u, _)| u)
                .filter(|u| !units.log.text().contains(&format!("start {u} ")))
                .collect();
            let Some(unit) = candidates.get(rng.below(candidates.len().max(1))).copied() else {
                println!("no apply left to kill an executor in");
                continue;
            };
            let milestone = format!("start {unit} ");
            poll_until(DEADLINE, &milestone, || {
                units.log.text().contains(&milestone).then_some(())
            });
            let worker = poll_until(DEADLINE, "the worker of the unit", || {
                worker_of(&sandbox, run, unit)
            });
            println!("kill -9 {worker} in the middle of {unit}'s apply");
            deployment.kill_executor(&worker);
            kills.push(now_ns());
            replacements += 1;
            let account = unit.split('/').next().unwrap();
            deployment.start_executor(account, &format!("{account}-r{replacements}"));
        }
    }
    let detail = wait_final(&sandbox, run);
    assert_eq!(
        detail.run.state,
        "succeeded",
        "{detail:#?}\n{}",
        deployment.dispatcher_log()
    );
    assert!(
        detail.jobs.iter().all(|j| j.state == "succeeded"),
        "{detail:#?}"
    );
    assert_final_states(&units.log, &sandbox.state_dir(), &layout, &kills);
    deployment.assert_running();
}

#[test]
fn a_poison_message_on_every_queue_is_dead_lettered_and_the_run_goes_on() {
    let (vhost, sandbox) = setup();
    let units = Units::new(&sandbox);
    let mut rng = Rng::seeded();
    let layout = random_layout(&mut rng, 2, 2);
    let (c0, c1) = commit_layout(&units, &layout, 1);
    let config = sandbox.write_config(&vhost.url, &[("dev", "dev/**"), ("prod", "prod/**")], "");
    let deployment = Deployment::start(sandbox.path(), &config, &[("dev", 1), ("prod", 1)]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let broker = runtime
        .block_on(Broker::connect(&vhost.url, "poisoner"))
        .unwrap();
    let poison = |route: Route<'_>, body: &[u8]| {
        let headers = Headers::new();
        runtime
            .block_on(broker.publish(route, Outgoing::new(body, "poison", &headers)))
            .unwrap();
    };
    // Before the run, and while it runs: every consumer must go on.
    poison(Route::Changes, b"\x01not bincode");
    poison(
        Route::Jobs {
            account: "dev",
            role: ExecutorRole::Apply,
        },
        b"",
    );
    let run = harness::runs::submit(&sandbox, &vhost, (&c0, &c1), "push", &[]);
    poll_until(DEADLINE, "the first apply", || {
        units.log.text().contains("start ").then_some(())
    });
    poison(Route::JobEvents, &[0xff; 64]);
    poison(Route::Claims, &[0xfe; 64]);
    poison(
        Route::Jobs {
            account: "prod",
            role: ExecutorRole::Apply,
        },
        b"\x09a future format",
    );
    poison(Route::Control, b"\x01\x02");

    let detail = wait_final(&sandbox, run);
    assert_eq!(detail.run.state, "succeeded", "{detail:#?}");
    let refs = as_refs(&layout);
    let order: Vec<(&str, &[&str])> = refs.iter().map(|(u, d)| (*u, d.as_slice())).collect();
    units.log.assert_applied_once_in_order(&order);
    assert_final_states(&units.log, &sandbox.state_dir(), &layout, &[]);

    for queue in [
        "pipelines.changes",
        "jobs.dev.apply",
        "pipelines.job-events",
        "pipelines.claims",
        "jobs.prod.apply",
        "pipelines.control",
    ] {
        let dead_queue = format!("dead.{queue}");
        let mut dead = runtime.block_on(broker.consume(&dead_queue, 10)).unwrap();
        let delivery = runtime
            .block_on(async { tokio::time::timeout(DEADLINE, dead.next()).await })
            .unwrap_or_else(|_| panic!("nothing in {dead_queue}"))
            .unwrap()
            .unwrap();
        let reason = delivery
            .headers
            .get(REASON_HEADER)
            .cloned()
            .unwrap_or_default();
        assert!(
            !reason.is_empty(),
            "{dead_queue}: a dead letter without a reason"
        );
        runtime.block_on(delivery.ack()).unwrap();
    }
    drop(deployment);
}

#[test]
fn a_job_delivered_twice_runs_once_and_records_one_result() {
    let (vhost, sandbox) = setup();
    let units = Units::new(&sandbox);
    let c0 = units.readme_only();
    let c1 = units.commit(
        "c1: one unit",
        1,
        &[("dev/app", &[], Behaviour::Succeed { seconds: 2 })],
    );
    let config = sandbox.write_config(&vhost.url, &[("dev", "dev/**")], "");
    // No worker yet: take the job message off the queue and put it back twice.
    let mut deployment = Deployment::start(sandbox.path(), &config, &[]);
    let run = harness::runs::submit(&sandbox, &vhost, (&c0, &c1), "push", &[]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let broker = runtime
        .block_on(Broker::connect(&vhost.url, "duplicator"))
        .unwrap();
    // Taken on a connection of its own, closed afterwards: a copy it may have been handed
    // meanwhile goes back to the queue.
    let taker = runtime
        .block_on(Broker::connect(&vhost.url, "taker"))
        .unwrap();
    let mut jobs = runtime
        .block_on(taker.consume("jobs.dev.apply", 1))
        .unwrap();
    let original = runtime
        .block_on(async { tokio::time::timeout(DEADLINE, jobs.next()).await })
        .expect("the job is queued")
        .unwrap()
        .unwrap();
    let message_id = original.message_id.clone().unwrap_or_default();
    for _ in 0..2 {
        let headers = original.headers.clone();
        runtime
            .block_on(broker.publish(
                Route::Jobs {
                    account: "dev",
                    role: ExecutorRole::Apply,
                },
                Outgoing::new(&original.body, &message_id, &headers),
            ))
            .unwrap();
    }
    runtime.block_on(original.ack()).unwrap();
    runtime.block_on(taker.close());
    drop(jobs);
    poll_until(DEADLINE, "both copies to be queued", || {
        let depths: BTreeMap<String, u64> = rabbit::queue_depths(&vhost).into_iter().collect();
        (depths["jobs.dev.apply"] == 2).then_some(())
    });
    deployment.start_executor("dev", "dev-1");
    deployment.start_executor("dev", "dev-2");

    let detail = wait_final(&sandbox, run);
    assert_eq!(detail.run.state, "succeeded", "{detail:#?}");
    assert_eq!(detail.jobs.len(), 1);
    assert_eq!(
        detail.jobs[0].attempt, 1,
        "one result, for the first attempt"
    );
    units.log.assert_applied_once_in_order(&[("dev/app", &[])]);
    // The second copy reached a worker, which was told the job is taken, and ran nothing.
    poll_until(DEADLINE, "the duplicate to be settled", || {
        let depths: BTreeMap<String, u64> = rabbit::queue_messages(&vhost).into_iter().collect();
        (depths["jobs.dev.apply"] == 0).then_some(())
    });
    let logs = format!(
        "{}{}",
        deployment.executor_log("dev-1"),
        deployment.executor_log("dev-2")
    );
    assert_eq!(
        logs.matches("Job claimed.").count(),
        1,
        "exactly one copy was granted:\n{logs}"
    );
    assert_eq!(
        logs.matches("Not running the job.").count(),
        1,
        "the other copy was dropped unrun:\n{logs}"
    );
    assert_final_states(
        &units.log,
        &sandbox.state_dir(),
        &[("dev/app".to_owned(), vec![])],
        &[],
    );
    deployment.assert_running();
}

/// A job whose every delivery ends without a result (its workers keep dying) is failed on its
/// message's last delivery, saying why, instead of being dead-lettered by the broker while the
/// run waits for it for ever.
#[test]
fn a_job_whose_deliveries_all_end_without_a_result_fails_its_run_instead_of_stalling_it() {
    let (vhost, sandbox) = setup();
    let units = Units::new(&sandbox);
    let c0 = units.readme_only();
    let c1 = units.commit(
        "c1: two units",
        1,
        &[
            ("dev/app", &[], Behaviour::Succeed { seconds: 1 }),
            ("dev/next", &["dev/app"], Behaviour::Succeed { seconds: 1 }),
        ],
    );
    let config = sandbox.write_config(&vhost.url, &[("dev", "dev/**")], "");
    let mut deployment = Deployment::start(sandbox.path(), &config, &[]);
    let run = harness::runs::submit(&sandbox, &vhost, (&c0, &c1), "push", &[]);
    // Standing in for workers that die holding the job: its message taken and given back, the
    // last time by a connection closed while holding it, up to its last delivery.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let crashing = runtime
        .block_on(Broker::connect(&vhost.url, "crashing-worker"))
        .unwrap();
    let mut jobs = runtime
        .block_on(crashing.consume("jobs.dev.apply", 1))
        .unwrap();
    for count in 0..DELIVERY_LIMIT - 1 {
        let delivery = runtime
            .block_on(async { tokio::time::timeout(DEADLINE, jobs.next()).await })
            .expect("the job is queued")
            .unwrap()
            .unwrap();
        assert_eq!(delivery.delivery_count, count);
        assert!(!delivery.is_last_chance());
        if count + 2 < DELIVERY_LIMIT {
            runtime.block_on(delivery.requeue()).unwrap();
        } else {
            // Requeued, the message would come straight back to this consumer (prefetch 1).
            drop(jobs);
            runtime.block_on(crashing.close());
            drop(delivery);
            break;
        }
    }
    deployment.start_executor("dev", "dev-1");

    let detail = wait_final(&sandbox, run);
    assert_eq!(detail.run.state, "failed", "{detail:#?}");
    let job = |unit: &str| detail.jobs.iter().find(|j| j.unit == unit).unwrap();
    assert_eq!(job("dev/app").state, "failed", "{detail:#?}");
    let reason = job("dev/app").reason.clone().unwrap_or_default();
    assert!(
        reason.contains(&format!(
            "delivered {DELIVERY_LIMIT} times without a result"
        )),
        "{reason}"
    );
    assert_eq!(job("dev/next").state, "skipped", "{detail:#?}");
    assert!(
        !units.log.text().contains("start dev/app "),
        "the job ran:\n{}",
        units.log.text()
    );
    // Settled by the worker, not dead-lettered by the broker.
    poll_until(DEADLINE, "the job's message to be settled", || {
        let depths: BTreeMap<String, u64> = rabbit::queue_messages(&vhost).into_iter().collect();
        (depths["jobs.dev.apply"] == 0).then_some(())
    });
    let depths: BTreeMap<String, u64> = rabbit::queue_messages(&vhost).into_iter().collect();
    assert_eq!(depths["dead.jobs.dev.apply"], 0, "{depths:?}");
    deployment.assert_running();
}

/// Many runs submitted at once by concurrent orchestrator processes: every run whose event the
/// broker confirmed reaches a final status (lost = 0); events delivered more than once are
/// counted (the dispatcher recognises them by id).
#[test]
fn a_burst_of_runs_from_concurrent_orchestrators_loses_none() {
    let runs: usize = if long_profile() { 1_000 } else { 60 };
    let vhost = rabbit::vhost();
    let sandbox = Sandbox::new();
    let c = harness::faults::three_noop_units(&sandbox);
    let config = sandbox.write_config(
        &vhost.url,
        &[("dev", "dev/**")],
        "\n[triggers]\nunit_added = \"noop\"\n",
    );
    let deployment = Deployment::start(sandbox.path(), &config, &[("dev", 4)]);
    let burst = harness::faults::burst_of_runs(
        &sandbox,
        &deployment,
        (&c.0, &c.1),
        std::slice::from_ref(&vhost.url),
        runs,
    );
    println!("{burst:?}");
    burst.assert_lost_none();
}
