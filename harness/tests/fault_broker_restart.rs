//! Fault injection: RabbitMQ stopped and started again in the middle of a run. Every component
//! reconnects by itself (rebuilding its connection, channels and consumers), and the run
//! completes with every unit in its final state. A test binary of its own, because the outage
//! hits every connection on the machine's broker.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // Test code: fail loudly, say what it did.

use harness::applies::Units;
use harness::faults::{
    Rng, assert_final_states, commit_layout, now_ns, random_layout, rounds, two_account_deployment,
};
use harness::poll_until;
use harness::rabbit::Outage;
use harness::runs::{DEADLINE, setup, submit, wait_final};

#[test]
fn rabbitmq_restarted_mid_run_every_component_reconnects_and_the_run_completes() {
    let rounds = rounds(3);
    for round in 1..=rounds {
        println!("round {round} of {rounds}");
        restart_round();
    }
}

fn restart_round() {
    let mut rng = Rng::seeded();
    let (vhost, sandbox) = setup();
    let units = Units::new(&sandbox);
    let layout = random_layout(&mut rng, 3, 2);
    let (c0, c1) = commit_layout(&units, &layout, 2);
    let mut deployment = two_account_deployment(&sandbox, &vhost);
    let run = submit(&sandbox, &vhost, (&c0, &c1), "push", &[]);

    // Mid-run: a random unit has finished (and so later layers are still to come).
    let (unit, _) = &layout[rng.below(layout.len() / 2)];
    let milestone = format!("end {unit} ");
    poll_until(DEADLINE, &milestone, || {
        units.log.text().contains(&milestone).then_some(())
    });
    let outage_at = now_ns();
    let outage = Outage::begin();
    println!("RabbitMQ stopped after {milestone}");
    poll_until(DEADLINE, "the dispatcher to notice", || {
        deployment
            .dispatcher_log()
            .contains("reconnecting")
            .then_some(())
    });
    outage.end();
    println!("RabbitMQ started again");

    let detail = wait_final(&sandbox, run);
    assert_eq!(
        detail.run.state,
        "succeeded",
        "{detail:#?}\n{}",
        deployment.dispatcher_log()
    );
    assert_final_states(&units.log, &sandbox.state_dir(), &layout, &[outage_at]);
    let log = deployment.dispatcher_log();
    assert!(log.matches("Dispatcher ready.").count() >= 2, "{log}");
    deployment.assert_running();
}
