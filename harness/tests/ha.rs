//! Two dispatchers on one PostgreSQL database, with real RabbitMQ and terraform: one leads,
//! the other stands by (its `/readyz` and metrics say so); the leader is `kill -9`ed, or
//! stopped past its lease and resumed, in the middle of a three-layer run. The standby takes
//! over, the run completes with every unit applied once, in order, never overlapping, and a
//! resumed leader steps down instead of writing or answering; one whose database stops
//! answering steps down within its lease. A PostgreSQL server restarted mid-run is waited out. And `pipelines store migrate` moves a SQLite run database into PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: fail loudly.

use std::process::Command;
use std::time::{Duration, Instant};

use dispatcher::store::ScratchDatabase;
use harness::applies::{Behaviour, Units};
use harness::deployment::Deployment;
use harness::postgres::PrivatePostgres;
use harness::process::{self, Finished, Service, http_get, metric_value, served_at};
use harness::rabbit::Vhost;
use harness::runs::{self, setup_on};
use harness::sandbox::{Engine, Sandbox};
use harness::{poll_until, poll_until_explained, summary_rows};

const DEADLINE: Duration = runs::DEADLINE;
/// Short, so that a takeover comes within seconds of the leader's end.
const LEADER_LEASE_SECONDS: u64 = 3;
const LEADING: &str = "Leading the dispatchers.";

/// Three layers of one unit each, every apply taking two seconds.
const LAYOUT: [(&str, &[&str]); 3] = [("dev/a", &[]), ("dev/b", &["dev/a"]), ("dev/c", &["dev/b"])];

/// Commits [`LAYOUT`], every apply taking two seconds: the range from before to after.
fn three_layers(units: &Units<'_>) -> (String, String) {
    let slow = Behaviour::Succeed { seconds: 2 };
    let c0 = units.readme_only();
    let layout: Vec<(&str, &[&str], Behaviour)> =
        LAYOUT.iter().map(|(u, d)| (*u, *d, slow)).collect();
    let c1 = units.commit("c1: three layers", 1, &layout);
    (c0, c1)
}

/// Submits `range` as a push run with an orchestrator that waits for it, in a thread.
fn submit_and_wait(
    sandbox: &Sandbox,
    vhost: &Vhost,
    (c0, c1): &(String, String),
) -> std::thread::JoinHandle<Finished> {
    let command: Command = sandbox.pipelines_on_range(
        "orchestrate",
        c0,
        c1,
        "push",
        &["--repo-name", "infra", "--broker", &vhost.url, "--wait"],
    );
    std::thread::spawn(move || process::run(command, DEADLINE))
}

struct Pair<'a> {
    units: &'a Units<'a>,
    deployment: Deployment,
    /// The dispatcher started second, standing by.
    standby: Service,
    waiter: std::thread::JoinHandle<Finished>,
}

/// The first dispatcher leading, the second standing by, workers running, and a push run of
/// [`LAYOUT`] submitted by a waiting orchestrator.
fn two_dispatchers_and_a_run<'a>(
    vhost: &Vhost,
    sandbox: &Sandbox,
    units: &'a Units<'a>,
) -> Pair<'a> {
    let range = three_layers(units);
    let config = sandbox.write_config(
        &vhost.url,
        &[("dev", "dev/**")],
        &format!(
            "lease_seconds = 10\nleader_lease_seconds = {LEADER_LEASE_SECONDS}\nmetrics_address = \"127.0.0.1:0\"\n"
        ),
    );
    let deployment = Deployment::start(sandbox.path(), &config, &[("dev", 2)]);
    poll_until(DEADLINE, "the first dispatcher to lead", || {
        deployment.dispatcher_log().contains(LEADING).then_some(())
    });
    let standby = deployment.start_another_dispatcher("dispatcher-standby");
    poll_until(DEADLINE, "the second dispatcher to stand by", || {
        standby.log_text().contains("Standing by").then_some(())
    });

    // Who leads, as an operator sees it: /readyz and the leader gauge.
    let leader_ops = served_at(|| deployment.dispatcher_log());
    let standby_ops = served_at(|| standby.log_text());
    poll_until(DEADLINE, "the leader to be ready", || {
        (http_get(&leader_ops, "/readyz")?.0 == 200).then_some(())
    });
    let (status, body) = http_get(&standby_ops, "/readyz").unwrap();
    assert_eq!(status, 503, "a standby is not ready: {body}");
    assert!(
        body.contains("standing by") && body.contains("leads (term 1)"),
        "{body}"
    );
    assert_eq!(leader_gauge(&leader_ops), Some(1.0));
    assert_eq!(leader_gauge(&standby_ops), Some(0.0));

    let waiter = submit_and_wait(sandbox, vhost, &range);
    Pair {
        units,
        deployment,
        standby,
        waiter,
    }
}

fn leader_gauge(ops: &str) -> Option<f64> {
    let (_, metrics) = http_get(ops, "/metrics")?;
    metric_value(&metrics, "pipelines_dispatcher_leader", &[])
}

impl Pair<'_> {
    /// Waits for the second layer's apply to start: the run is in its middle.
    fn wait_for_the_middle(&self) {
        poll_until(DEADLINE, "dev/b's apply to start", || {
            self.units.log.text().contains("start dev/b").then_some(())
        });
    }

    /// Waits for the standby to lead; how long it took from `since`.
    fn wait_for_the_takeover(&self, since: Instant) -> Duration {
        poll_until(DEADLINE, "the standby to take the lead", || {
            self.standby.log_text().contains(LEADING).then_some(())
        });
        since.elapsed()
    }

    /// The run succeeded, every unit applied exactly once, in dependency order, with no two
    /// applies of a unit overlapping; the new leader is ready.
    fn assert_the_run_completed(self) {
        let run = self.waiter.join().unwrap();
        assert_eq!(
            run.code(),
            Some(0),
            "{}\n{}",
            run.transcript(),
            self.standby.log_text()
        );
        let rows = summary_rows(&run.stdout);
        for (unit, _) in LAYOUT {
            assert_eq!(
                rows.get(unit).map(|r| r.2.as_str()),
                Some("succeeded"),
                "{}",
                run.stdout
            );
        }
        self.units.log.assert_applied_once_in_order(&LAYOUT);
        self.units.log.assert_no_overlap_per_unit();
        let ops = served_at(|| self.standby.log_text());
        poll_until(DEADLINE, "the new leader to be ready", || {
            (http_get(&ops, "/readyz")?.0 == 200).then_some(())
        });
        assert_eq!(leader_gauge(&ops), Some(1.0));
    }
}

#[test]
fn a_killed_leader_is_replaced_by_the_standby_and_the_run_completes_applying_each_unit_once() {
    let (vhost, sandbox) = setup_on(Engine::Postgres);
    let units = Units::new(&sandbox);
    let mut pair = two_dispatchers_and_a_run(&vhost, &sandbox, &units);
    pair.wait_for_the_middle();
    pair.deployment.kill_dispatcher();
    let took = pair.wait_for_the_takeover(Instant::now());
    eprintln!(
        "the standby led {took:?} after the leader was killed (lease {LEADER_LEASE_SECONDS} s)"
    );
    let log = pair.standby.log_text();
    assert!(log.contains("term=2"), "{log}");
    // The new leader logs its term first and its restore after reading the store: the log is
    // read between the two often enough that asserting at once would race.
    poll_until_explained(
        DEADLINE,
        "the new leader to restore the active runs",
        || {
            pair.standby
                .log_text()
                .contains("Restored the active runs.")
                .then_some(())
        },
        || pair.standby.log_text(),
    );
    pair.assert_the_run_completed();
}

#[test]
fn a_leader_stopped_past_its_lease_is_fenced_off_when_it_resumes_and_steps_down() {
    let (vhost, sandbox) = setup_on(Engine::Postgres);
    let units = Units::new(&sandbox);
    let mut pair = two_dispatchers_and_a_run(&vhost, &sandbox, &units);
    pair.wait_for_the_middle();
    let mut frozen = pair.deployment.take_dispatcher();
    signal(&frozen, "STOP");
    let took = pair.wait_for_the_takeover(Instant::now());
    eprintln!("the standby led {took:?} after the leader stopped (lease {LEADER_LEASE_SECONDS} s)");
    // Resumed, the old leader finds a newer term: on its next write (fenced off), or on its
    // next renewal, or its own clock of the lease says it ran out before its next answer,
    // whichever comes first. Either way it exits rather than go on.
    signal(&frozen, "CONT");
    let status = frozen.wait_exit(DEADLINE);
    assert!(!status.success(), "a deposed leader exits with an error");
    let log = frozen.log_text();
    let stepped_down = log.lines().find(|line| line.contains("steps down"));
    eprintln!("the resumed leader: {stepped_down:?}");
    assert!(stepped_down.is_some(), "{log}");
    assert!(
        log.contains("is fenced off")
            || log.contains("another dispatcher took the lead")
            || log.contains("ran out by this dispatcher's clock"),
        "{log}"
    );
    pair.assert_the_run_completed();
}

fn signal(service: &Service, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &service.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {}", service.pid());
}

#[test]
fn store_migrate_moves_a_sqlite_run_database_into_postgres_where_status_reads_it() {
    let (vhost, sandbox) = setup_on(Engine::Sqlite);
    let units = Units::new(&sandbox);
    let c0 = units.readme_only();
    let c1 = units.commit(
        "c1: one unit",
        1,
        &[("dev/a", &[], Behaviour::Succeed { seconds: 0 })],
    );
    let config = sandbox.write_config(&vhost.url, &[("dev", "dev/**")], "");
    let mut deployment = Deployment::start(sandbox.path(), &config, &[("dev", 1)]);
    let run = runs::submit(&sandbox, &vhost, (&c0, &c1), "push", &[]);
    let before = runs::wait_final(&sandbox, run);
    assert_eq!(before.run.state, "succeeded", "{before:#?}");
    deployment.kill_dispatcher();

    let database = ScratchDatabase::create().unwrap_or_else(|err| panic!("{err}"));
    let secret = sandbox.path().join("pg-password");
    std::fs::write(&secret, "unused-with-trust-auth\n").unwrap();
    let from = format!("sqlite://{}", sandbox.dispatcher_state_dir().display());
    let migrate = |to: &str| {
        process::run(
            sandbox.pipelines(&[
                "store",
                "migrate",
                "--from",
                &from,
                "--to",
                to,
                "--password-file",
                secret.to_str().unwrap(),
            ]),
            DEADLINE,
        )
    };
    let moved = migrate(database.url());
    assert_eq!(moved.code(), Some(0), "{}", moved.transcript());
    assert!(
        moved.stderr.contains("runs: 1 rows") && moved.stderr.contains("jobs: 1 rows"),
        "{}",
        moved.stderr
    );
    assert!(
        !moved.stderr.contains("unused-with-trust-auth"),
        "{}",
        moved.stderr
    );

    // Read back through a policy file naming the PostgreSQL database: the same run.
    let pg_config = sandbox.path().join("pg.toml");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "[dispatcher]\n",
        &format!("[dispatcher]\nstore = \"{}\"\n", database.url()),
    );
    std::fs::write(&pg_config, text).unwrap();
    let id = run.to_string();
    let status = process::run(
        sandbox.pipelines(&[
            "status",
            &id,
            "--config",
            pg_config.to_str().unwrap(),
            "--format",
            "json",
        ]),
        Duration::from_secs(30),
    );
    assert_eq!(status.code(), Some(0), "{}", status.transcript());
    let after: proto_types::RunDetail = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(after, before);

    // A second copy would mix two histories: refused, naming why.
    let again = migrate(database.url());
    assert_eq!(again.code(), Some(2), "{}", again.transcript());
    assert!(
        again.stderr.contains("already holds 1 runs"),
        "{}",
        again.stderr
    );
}

#[test]
fn a_postgres_restart_mid_run_is_waited_out_and_the_run_completes() {
    let server = PrivatePostgres::start();
    let sandbox = Sandbox::on_postgres_server(&server.url());
    let vhost = harness::rabbit::vhost();
    let units = Units::new(&sandbox);
    let range = three_layers(&units);
    // A lease longer than the restart: the leader keeps the lead across it.
    let config = sandbox.write_config(
        &vhost.url,
        &[("dev", "dev/**")],
        "lease_seconds = 10\nleader_lease_seconds = 30\n",
    );
    let mut deployment = Deployment::start(sandbox.path(), &config, &[("dev", 2)]);
    let waiter = submit_and_wait(&sandbox, &vhost, &range);
    poll_until(DEADLINE, "dev/b's apply to start", || {
        units.log.text().contains("start dev/b").then_some(())
    });
    server.restart();

    let run = waiter.join().unwrap();
    let log = deployment.dispatcher_log();
    assert_eq!(run.code(), Some(0), "{}\n{log}", run.transcript());
    units.log.assert_applied_once_in_order(&LAYOUT);
    units.log.assert_no_overlap_per_unit();
    // The same process went on: it lost the database, reconnected, and kept its term.
    deployment.assert_running();
    assert!(log.contains("is unavailable"), "{log}");
    assert_eq!(log.matches(LEADING).count(), 1, "{log}");
    assert!(!log.contains("steps down"), "{log}");
}

/// A dispatcher leading with a short lease, and one worker, on a PostgreSQL server of the
/// test's own (to freeze). Dropped in reverse: the deployment before the server.
fn one_leader_on_a_private_server() -> (PrivatePostgres, Sandbox, Vhost, Deployment) {
    let server = PrivatePostgres::start();
    let sandbox = Sandbox::on_postgres_server(&server.url());
    let vhost = harness::rabbit::vhost();
    let config = sandbox.write_config(
        &vhost.url,
        &[("dev", "dev/**")],
        &format!("leader_lease_seconds = {LEADER_LEASE_SECONDS}\n"),
    );
    let deployment = Deployment::start(sandbox.path(), &config, &[("dev", 1)]);
    poll_until(DEADLINE, "the dispatcher to lead", || {
        deployment.dispatcher_log().contains(LEADING).then_some(())
    });
    (server, sandbox, vhost, deployment)
}

#[test]
fn a_leader_whose_database_stops_answering_steps_down_within_its_lease() {
    let (server, _sandbox, _vhost, mut deployment) = one_leader_on_a_private_server();
    // Every statement now waits for ever, on connections that stay open: without its own
    // deadline the renewal would too, and the leader would never learn that its lease ran out.
    server.signal_all("STOP");
    let frozen_at = Instant::now();
    let mut leader = deployment.take_dispatcher();
    let status = leader.wait_exit(DEADLINE);
    let took = frozen_at.elapsed();
    server.signal_all("CONT");
    eprintln!(
        "the leader stepped down {took:?} after its database froze (lease {LEADER_LEASE_SECONDS} s)"
    );
    assert_eq!(status.code(), Some(3), "{}", leader.log_text());
    let log = leader.log_text();
    assert!(
        log.contains("ran out before it could be renewed") && log.contains("steps down"),
        "{log}"
    );
}

/// One connection that stops answering (its server process stuck, or a connection a
/// middlebox dropped without a reset) costs the leader one renewal: the next is asked on a new
/// connection, and the lead is kept. (Before, the next renewal waited for the stuck one's
/// connection until the lease ran out, and a healthy database saw its leader step down.)
#[test]
fn a_leader_whose_renewal_connection_hangs_renews_on_another_and_keeps_the_lead() {
    let (server, _sandbox, _vhost, mut deployment) = one_leader_on_a_private_server();
    let renewals = "UPDATE dispatcher_leader%SET expires_at = clock_timestamp() +%";
    // Frozen between two renewals: one frozen inside its UPDATE would hold the lease row's
    // lock, on which every other connection waits. A frozen process cannot change the state
    // it reported, so one still idle after the STOP holds nothing.
    let renewer = poll_until(
        DEADLINE,
        "the renewer's connection, frozen while idle",
        || {
            let [pid] = server.idle_backends(renewals)[..] else {
                return None;
            };
            server.signal_backend(pid, "STOP");
            if server.idle_backends(renewals).contains(&pid) {
                return Some(pid);
            }
            server.signal_backend(pid, "CONT");
            None
        },
    );
    poll_until(DEADLINE, "a renewal on another connection", || {
        let log = deployment.dispatcher_log();
        assert!(!log.contains("steps down"), "{log}");
        log.contains("Renewed the lead again.").then_some(())
    });
    server.signal_backend(renewer, "CONT");
    let log = deployment.dispatcher_log();
    assert!(
        log.contains("Cannot renew the lead; trying again"),
        "the stuck renewal was abandoned: {log}"
    );
    deployment.assert_running();
}

/// A leader paused past its lease may wake with workers' claims in its buffer, for jobs a new
/// leader published since. From what it last knew it would answer "unknown job", and the
/// worker would drop the delivery. Before anything of a batch leaves, it reads its own clock
/// of the lease. Run out, it renews the lease first: while the lead is still its own it goes
/// on answering; taken by another, it answers nothing, acks nothing and steps down, and the
/// claim stays with the broker for the leader.
#[test]
fn a_dispatcher_whose_lease_ran_out_by_its_clock_answers_only_once_it_renewed_it() {
    use broker::topology::Topology;
    use broker::{Broker, Headers, Outgoing, Route};
    use dispatcher::leadership::LeaseClock;
    use dispatcher::store::Store;
    use proto_types::{ClaimReply, JobEvent, JobEventKind, Payload};

    let vhost = harness::rabbit::vhost();
    let sandbox = Sandbox::new();
    let database = ScratchDatabase::create().unwrap();
    let location = database.location().clone();
    let config =
        // No pruning at start: that is a write, which the fence would refuse first.
        config::Config::load(&sandbox.write_config(
            &vhost.url,
            &[("dev", "dev/**")],
            "retention_days = 0\n",
        ))
        .unwrap();
    let term = Store::connect(&location)
        .unwrap()
        .try_lead("first", 60_000)
        .unwrap()
        .expect("the lead is free");
    // A clock of a lease of no length: it ran out as it was read.
    let lapsed = || LeaseClock::new(term, "first", Instant::now(), Duration::ZERO);
    let dispatcher_with = |broker: Broker| {
        let store = Store::connect(&location).unwrap().fenced_by(term).unwrap();
        dispatcher::Dispatcher::new(broker, config.clone(), store)
            .unwrap()
            .with_lease(lapsed())
    };
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let worker = Broker::connect(&vhost.url, "w1").await.unwrap();
        let topology = Topology::new(config.account_names());
        worker.ensure_topology(&topology).await.unwrap();
        worker.declare_transient_queues(&topology).await.unwrap();
        let mut replies = worker.reply_queue().await.unwrap();
        let claim = |job| JobEvent {
            job_id: job,
            run_id: uuid::Uuid::new_v4(),
            attempt: 1,
            worker: "w1".into(),
            kind: JobEventKind::Started { redelivered: false },
        };
        let reply_queue = replies.queue().to_owned();
        let send = |claim: JobEvent| {
            let (worker, queue) = (&worker, reply_queue.clone());
            async move {
                let body = claim.encode();
                let headers = Headers::new();
                let message = Outgoing {
                    reply_to: Some(&queue),
                    ..Outgoing::new(&body, "claim", &headers)
                };
                worker.publish(Route::Claims, message).await.unwrap();
            }
        };

        // Still the leader in the database: it renews the lease and answers.
        send(claim(uuid::Uuid::new_v4())).await;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let leader = Broker::connect(&vhost.url, "leader").await.unwrap();
        let running = tokio::spawn(dispatcher_with(leader).run(async {
            let _ = stopped.await;
        }));
        let answer = tokio::time::timeout(DEADLINE, replies.next())
            .await
            .expect("the leader answered")
            .unwrap()
            .unwrap();
        let reply = ClaimReply::decode(&answer.body).unwrap();
        assert!(format!("{reply:?}").contains("unknown"), "{reply:?}");
        let _ = stop.send(());
        running.await.unwrap().unwrap();

        // Another dispatcher took the lead: it answers nothing and steps down.
        let database_side = Store::connect(&location).unwrap();
        database_side.resign("first", term).unwrap();
        let taken = database_side.try_lead("second", 60_000).unwrap().unwrap();
        assert!(taken > term);
        send(claim(uuid::Uuid::new_v4())).await;
        let deposed = Broker::connect(&vhost.url, "deposed").await.unwrap();
        let ended = tokio::time::timeout(
            DEADLINE,
            dispatcher_with(deposed).run(std::future::pending()),
        )
        .await
        .expect("the deposed dispatcher went on answering");
        let err = ended.expect_err("it stepped down");
        assert!(
            err.to_string().contains(&format!(
                "the lease of term {term} ran out by this dispatcher's clock, and another \
                 dispatcher took the lead meanwhile"
            )),
            "{err}"
        );
        // The claim was not settled: it is still the broker's, ready or delivered.
        let held: u64 = harness::rabbit::queue_messages(&vhost)
            .iter()
            .filter(|(queue, _)| queue.starts_with("pipelines."))
            .map(|(_, messages)| messages)
            .sum();
        assert_eq!(held, 1, "{:?}", harness::rabbit::queue_messages(&vhost));
        // Nothing waits on the reply queue (a timeout of zero looks once).
        assert!(
            tokio::time::timeout(Duration::ZERO, replies.next())
                .await
                .is_err(),
            "it answered the claim"
        );
        worker.close().await;
    });
}
