//! The dispatcher's and an executor's `/metrics`, `/healthz` and `/readyz` over a real run, and
//! through a broker outage: readiness drops while RabbitMQ is down and comes back with it, and
//! the services carry on. This binary stops RabbitMQ, so it holds this one test only.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: fail loudly.

use std::time::Duration;

use harness::applies::{Behaviour, Units};
use harness::deployment::Deployment;
use harness::process::{http_get, served_at};
use harness::rabbit::Outage;
use harness::runs::{follow_to_end, setup};
use harness::{poll_until, poll_until_explained};

fn ready(address: &str) -> Option<u16> {
    http_get(address, "/readyz").map(|(status, _)| status)
}

#[test]
fn metrics_count_the_runs_jobs_and_readiness_follows_the_broker() {
    let (vhost, sandbox) = setup();
    let units = Units::new(&sandbox);
    let quick = Behaviour::Succeed { seconds: 0 };
    let c0 = units.readme_only();
    let c1 = units.commit(
        "c1: three units",
        1,
        &[
            ("dev/a", &[], quick),
            ("dev/b", &[], quick),
            ("dev/c", &[], quick),
        ],
    );
    let c2 = units.commit("c2: one changed", 2, &[("dev/a", &[], quick)]);
    let extra =
        "metrics_address = \"127.0.0.1:0\"\n\n[executor]\nmetrics_address = \"127.0.0.1:0\"\n";
    let config = sandbox.write_config(&vhost.url, &[("dev", "dev/**")], extra);
    let mut deployment = Deployment::start(sandbox.path(), &config, &[("dev", 1)]);
    let dispatcher = served_at(|| deployment.dispatcher_log());
    let executor = served_at(|| deployment.executor_log("dev-1"));
    for address in [&dispatcher, &executor] {
        poll_until(Duration::from_secs(60), "ready", || {
            (ready(address) == Some(200)).then_some(())
        });
    }

    follow_to_end(&sandbox, &vhost, (&c0, &c1), "push", 0);
    // The load gauges are brought up to date at most every quarter second, and once more
    // after the last change: they settle at zero without another message.
    poll_until(Duration::from_secs(10), "the load gauges at zero", || {
        let metrics = http_get(&dispatcher, "/metrics").unwrap().1;
        (metrics.contains("pipelines_jobs_in_flight{account=\"dev\"} 0\n")
            && metrics.contains("pipelines_jobs_waiting 0\n"))
        .then_some(())
    });
    let metrics = http_get(&dispatcher, "/metrics").unwrap().1;
    assert!(
        metrics.contains("pipelines_jobs_finished_total{action=\"apply\",state=\"succeeded\"} 3\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("pipelines_runs_finished_total{event=\"push\",state=\"succeeded\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("pipelines_job_duration_seconds_count{action=\"apply\"} 3\n"),
        "{metrics}"
    );
    let worker = http_get(&executor, "/metrics").unwrap().1;
    assert!(
        worker.contains("pipelines_executor_jobs_total{action=\"apply\",status=\"succeeded\"} 3\n"),
        "{worker}"
    );
    assert!(
        worker.contains("pipelines_executor_jobs_running 0\n"),
        "{worker}"
    );

    let outage = Outage::begin();
    for address in [&dispatcher, &executor] {
        poll_until(
            Duration::from_secs(60),
            "not ready during the outage",
            || (ready(address) == Some(503)).then_some(()),
        );
        assert_eq!(
            http_get(address, "/healthz").map(|r| r.0),
            Some(200),
            "alive all the same"
        );
    }
    outage.end();
    for address in [&dispatcher, &executor] {
        poll_until_explained(
            Duration::from_secs(120),
            &format!("{address} to be ready again"),
            || (ready(address) == Some(200)).then_some(()),
            || {
                format!(
                    "--- dispatcher:\n{}\n--- executor:\n{}",
                    deployment.dispatcher_log(),
                    deployment.executor_log("dev-1")
                )
            },
        );
    }

    // And they work again: a second run goes through.
    follow_to_end(&sandbox, &vhost, (&c1, &c2), "push", 0);
    let metrics = http_get(&dispatcher, "/metrics").unwrap().1;
    assert!(
        metrics.contains("pipelines_runs_finished_total{event=\"push\",state=\"succeeded\"} 2\n"),
        "{metrics}"
    );
    deployment.assert_running();
}
