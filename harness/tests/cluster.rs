//! A three-node RabbitMQ cluster that loses a node mid-run: the dispatcher and the workers
//! are connected to the node that stops mid-apply, reconnect to a surviving one
//! (`broker_urls`), and the run completes with every unit applied to the end once, in order. Quorum queues keep what the
//! stopped node held; the claims queue, which lives on one node, is declared again by the
//! dispatcher wherever it lands. The fault suite's burst of runs passes against the cluster
//! too (60 runs; 1,000 with `PIPELINES_FAULT_PROFILE=long`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // Test code: fail loudly, say what it did.

use harness::applies::{Behaviour, Units, gate_path};
use harness::cluster::Cluster;
use harness::deployment::Deployment;
use harness::poll_until_explained;
use harness::runs::{DEADLINE, status, submit, wait_final};
use harness::sandbox::Sandbox;
use harness::{require_null_provider, require_terraform};

#[test]
fn a_run_completes_when_the_broker_node_everyone_is_connected_to_stops() {
    require_terraform();
    require_null_provider();
    let mut cluster = Cluster::start();
    let sandbox = Sandbox::new();
    let config = sandbox.write_config(
        &cluster.nodes[0].url,
        &[("dev", "dev/**")],
        "lease_seconds = 10\n",
    );
    // Every node, the first one first: everyone connects to node 0.
    use_every_node(&config, &cluster);
    let mut deployment = Deployment::start(sandbox.path(), &config, &[("dev", 2)]);

    let units = Units::new(&sandbox);
    let c0 = units.readme_only();
    let c1 = units.commit(
        "c1: three layers",
        1,
        &[
            ("dev/a", &[], Behaviour::WaitForGate),
            ("dev/b", &["dev/a"], Behaviour::Succeed { seconds: 0 }),
            ("dev/c", &["dev/b"], Behaviour::Succeed { seconds: 0 }),
        ],
    );
    let survivor = cluster.nodes[1].url.clone();
    let run = submit(&sandbox, survivor.as_str(), (&c0, &c1), "push", &[]);
    poll_until_explained(
        DEADLINE,
        "dev/a to run",
        || {
            status(&sandbox, run)
                .filter(|d| harness::runs::job(d, "dev/a").state.as_str() == "running")
        },
        || deployment.dispatcher_log(),
    );
    // Mid-apply: dev/a's terraform is in its provisioner, waiting for the gate.
    poll_until_explained(
        DEADLINE,
        "dev/a's apply to start",
        || units.log.text().contains("start dev/a").then_some(()),
        || deployment.dispatcher_log(),
    );
    let first_port = format!(":{}/", cluster.nodes[0].port);
    assert!(
        deployment
            .dispatcher_log()
            .lines()
            .any(|line| line.contains("Connected to a broker node") && line.contains(&first_port)),
        "the dispatcher is on node 0:\n{}",
        deployment.dispatcher_log()
    );

    // Node 0 goes, with every connection to it; then dev/a may finish.
    let stopping = harness::faults::now_ns();
    cluster.stop(0);
    std::fs::write(gate_path(&sandbox.state_dir(), "dev/a"), "open").unwrap();
    let finished = wait_final(&sandbox, run);
    assert_eq!(
        finished.run.state.as_str(),
        "succeeded",
        "{finished:#?}\nqueues:\n{}\ndispatcher:\n{}",
        cluster.queues(),
        deployment.dispatcher_log()
    );
    for job in &finished.jobs {
        assert_eq!(job.state.as_str(), "succeeded", "{job:#?}");
    }
    // Lost nothing and did nothing twice: each unit has one finished apply, in dependency
    // order. A worker that loses its broker abandons its job (its tool is killed, see
    // `AbandonGuard`) and the job runs again once a worker reconnects: so dev/a may also have
    // an apply that started before the node stopped and never ended, and its finished apply
    // started after the stop.
    println!("applies:\n{}", units.log.text());
    let by_unit = units.log.by_unit();
    for unit in ["dev/a", "dev/b", "dev/c"] {
        let (finished, cut): (Vec<_>, Vec<_>) = by_unit[unit].iter().partition(|a| a.end.is_some());
        assert_eq!(finished.len(), 1, "{unit}: {}", units.log.text());
        for apply in cut {
            assert!(
                unit == "dev/a" && apply.start < stopping && finished[0].start > stopping,
                "{unit}: an apply cut other than by the node's loss: {}",
                units.log.text()
            );
        }
    }
    let end_of = |unit: &str| by_unit[unit].iter().find_map(|a| a.end).unwrap();
    let start_of = |unit: &str| by_unit[unit].iter().map(|a| a.start).max().unwrap();
    assert!(end_of("dev/a") < start_of("dev/b") && end_of("dev/b") < start_of("dev/c"));
    // The CLI in CI takes the nodes too: with node 0 gone, the next one takes the run.
    let nodes = cluster.urls().join(",");
    let c2 = units.commit(
        "c2: a change to plan",
        2,
        &[("dev/c", &["dev/b"], Behaviour::Succeed { seconds: 0 })],
    );
    let planned = submit(&sandbox, nodes.as_str(), (&c1, &c2), "pull-request", &[]);
    assert_eq!(
        wait_final(&sandbox, planned).run.state.as_str(),
        "succeeded"
    );
    let others: Vec<String> = cluster.nodes[1..]
        .iter()
        .map(|node| format!(":{}/", node.port))
        .collect();
    assert!(
        deployment
            .dispatcher_log()
            .lines()
            .any(|line| line.contains("Connected to a broker node")
                && others.iter().any(|port| line.contains(port))),
        "the dispatcher moved to a surviving node:\n{}",
        deployment.dispatcher_log()
    );
    deployment.assert_running();
}

/// `config`'s `broker_url` line replaced by every node of `cluster`, the first one first.
fn use_every_node(config: &std::path::Path, cluster: &Cluster) {
    let urls: Vec<String> = cluster.urls().iter().map(|u| format!("{u:?}")).collect();
    let text = std::fs::read_to_string(config).unwrap();
    let text = text.replacen(
        &format!("broker_url = {:?}", cluster.nodes[0].url),
        &format!("broker_urls = [{}]", urls.join(", ")),
        1,
    );
    assert!(text.starts_with("broker_urls = ["), "{text}");
    std::fs::write(config, text).unwrap();
}

#[test]
fn a_burst_of_runs_from_orchestrators_on_every_node_loses_none() {
    let runs: usize = if harness::faults::long_profile() {
        1_000
    } else {
        60
    };
    let cluster = Cluster::start();
    let sandbox = Sandbox::new();
    let range = harness::faults::three_noop_units(&sandbox);
    let config = sandbox.write_config(
        &cluster.nodes[0].url,
        &[("dev", "dev/**")],
        "\n[triggers]\nunit_added = \"noop\"\n",
    );
    use_every_node(&config, &cluster);
    let deployment = Deployment::start(sandbox.path(), &config, &[("dev", 4)]);
    let burst = harness::faults::burst_of_runs(
        &sandbox,
        &deployment,
        (&range.0, &range.1),
        &cluster.urls(),
        runs,
    );
    println!("{burst:?}");
    burst.assert_lost_none();
}
