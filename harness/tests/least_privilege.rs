//! The shipped RabbitMQ definitions against the real broker: each component's user can do its
//! job and nothing more, RabbitMQ refuses forged identities, the dispatcher takes runs only from
//! orchestrators, and bad messages are dead-lettered while consumers go on.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: fail loudly.

use std::collections::BTreeMap;

use broker::{Broker, BrokerError, Consumer, Headers, Outgoing, REASON_HEADER, Route};
use harness::applies::{Behaviour, Units};
use harness::deployment::Deployment;
use harness::poll_until;
use harness::rabbit::LeastPrivilege;
use harness::runs::{DEADLINE, follow_to_end, setup};
use harness::sandbox::Sandbox;
use proto_types::{
    Change, ChangeEvent, ChangeKind, ExecutorRole, JobEvent, JobEventKind, JobOutcome, JobStatus,
    Payload, Trigger,
};
use uuid::Uuid;

/// A two-account deployment where every component runs as its own user. Fields drop in
/// order: the services, then their users and vhost, then their files.
struct World {
    deployment: Deployment,
    access: LeastPrivilege,
    sandbox: Sandbox,
    commits: (String, String),
    runtime: tokio::runtime::Runtime,
}

fn world() -> World {
    world_without(&[])
}

/// The world without the executors named `<account>-<role>` in `held_back`
/// ([`World::start_executor`] starts one later).
fn world_without(held_back: &[&str]) -> World {
    let (_vhost, sandbox) = setup();
    let units = Units::new(&sandbox);
    let quick = Behaviour::Succeed { seconds: 0 };
    let c0 = units.readme_only();
    let c1 = units.commit(
        "c1: one unit per account",
        1,
        &[("dev/app", &[], quick), ("prod/app", &["dev/app"], quick)],
    );
    drop(units);
    let accounts = [("dev", "dev/**"), ("prod", "prod/**")];
    let access = LeastPrivilege::import_shipped(sandbox.path(), &["dev", "prod"]);
    // Pushes only from the deploy branch's orchestrator; job events only from the executor
    // user of each job's own account and role.
    let extra = format!(
        "orchestrator_users = [\"{}\"]\ndeploy_orchestrator_users = [\"{}\"]\nexecutor_users = \"{}\"\n",
        access.user("orchestrator"),
        access.user("orchestrator-deploy"),
        access.user("executor-{account}-{role}")
    );
    let config = sandbox.write_config(&access.url("admin"), &accounts, &extra);
    let dispatcher_url = access.url("dispatcher");
    let deployment = Deployment::start_with_env(
        sandbox.path(),
        &config,
        &[],
        &[("PIPELINES_BROKER_URL", &dispatcher_url)],
        &[],
    );
    let mut world = World {
        deployment,
        access,
        sandbox,
        commits: (c0, c1),
        runtime: tokio::runtime::Runtime::new().unwrap(),
    };
    for account in ["dev", "prod"] {
        for role in ["plan", "apply"] {
            if !held_back.contains(&format!("{account}-{role}").as_str()) {
                world.start_executor(account, role);
            }
        }
    }
    world
}

/// A file holding `user`'s password alone, readable by its owner only.
fn password_file(sandbox: &Sandbox, access: &LeastPrivilege, user: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = sandbox.path().join(format!("{user}.password"));
    std::fs::write(&path, format!("{}\n", access.password(user))).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

impl World {
    /// Starts `<account>-<role>-1` as its own broker user. Executors read their password from
    /// a file: their environment holds none.
    fn start_executor(&mut self, account: &str, role: &str) {
        let user = format!("executor-{account}-{role}");
        let password_file = password_file(&self.sandbox, &self.access, &user);
        self.deployment.start_executor_with(
            &format!("{account}:{role}"),
            &format!("{account}-{role}-1"),
            &[
                (
                    "PIPELINES_BROKER_URL",
                    &self.access.url_without_password(&user),
                ),
                (
                    "PIPELINES_BROKER_PASSWORD_FILE",
                    password_file.to_str().unwrap(),
                ),
            ],
        );
    }

    fn connect(&self, role: &str) -> Broker {
        self.runtime
            .block_on(Broker::connect(
                &self.access.url(role),
                "least-privilege-test",
            ))
            .unwrap()
    }

    /// An admin connection that may send frames as large as RabbitMQ allows, as any
    /// publisher may.
    fn connect_with_big_frames(&self) -> Broker {
        let url = broker::with_frame_max(
            &self.access.url("admin"),
            broker::UNTRUSTED_PUBLISHERS_FRAME_MAX,
        );
        self.runtime
            .block_on(Broker::connect(&url, "least-privilege-test"))
            .unwrap()
    }

    /// The most bytes of padding (to 4) whose headers still fit a publisher's frame, found
    /// from above by messages to a queue that does not exist (RabbitMQ closes the connection
    /// of a publisher whose frame is larger), so that it does not depend on which properties
    /// a message carries.
    fn most_padding_in_a_frame(&self) -> usize {
        let body = b"probe".to_vec();
        (130_000..131_072)
            .rev()
            .step_by(4)
            .find(|&padding| {
                let headers = padded(padding);
                let probe = Outgoing::new(&body, "probe", &headers);
                let route = Route::Reply {
                    queue: "amq.gen-nobody-listens",
                };
                let publisher = self.connect_with_big_frames();
                match self.runtime.block_on(publisher.publish(route, probe)) {
                    Ok(()) | Err(BrokerError::Unroutable { .. }) => true,
                    Err(BrokerError::Protocol { reason, .. }) if reason.contains("FRAME_ERROR") => {
                        false
                    }
                    Err(other) => panic!("{other}"),
                }
            })
            .expect("a padding that fits a 128 KiB frame")
    }

    fn publish(
        &self,
        broker: &Broker,
        route: Route<'_>,
        body: &[u8],
        user_id: Option<&str>,
    ) -> Result<(), BrokerError> {
        let headers = Headers::new();
        let message = Outgoing {
            user_id,
            ..Outgoing::new(body, "m", &headers)
        };
        self.runtime.block_on(broker.publish(route, message))
    }

    fn consume(&self, broker: &Broker, queue: &str) -> Result<Consumer, BrokerError> {
        self.runtime.block_on(broker.consume(queue, 1))
    }

    /// Dead-lettered messages of `queue` with their reasons (read as the admin).
    fn dead_letters(&self, queue: &str, count: usize) -> Vec<(Vec<u8>, String)> {
        self.dead_letters_via(&self.connect("admin"), queue, count)
    }

    /// [`World::dead_letters`] read through `broker`.
    fn dead_letters_via(
        &self,
        broker: &Broker,
        queue: &str,
        count: usize,
    ) -> Vec<(Vec<u8>, String)> {
        self.dead_letters_with_headers(broker, queue, count)
            .into_iter()
            .map(|(body, headers)| {
                let reason = headers.get(REASON_HEADER).cloned().unwrap_or_default();
                (body, reason)
            })
            .collect()
    }

    /// Dead-lettered messages of `queue` with all their headers, read through `broker`.
    fn dead_letters_with_headers(
        &self,
        broker: &Broker,
        queue: &str,
        count: usize,
    ) -> Vec<(Vec<u8>, Headers)> {
        let mut dead = self.consume(broker, &format!("dead.{queue}")).unwrap();
        let mut found = Vec::new();
        while found.len() < count {
            let delivery = self
                .runtime
                .block_on(async { tokio::time::timeout(DEADLINE, dead.next()).await })
                .unwrap_or_else(|_| {
                    panic!(
                        "only {} of {count} dead letters in dead.{queue}: {found:?}",
                        found.len()
                    )
                })
                .unwrap()
                .unwrap();
            found.push((delivery.body.clone(), delivery.headers.clone()));
            self.runtime.block_on(delivery.ack()).unwrap();
        }
        found
    }

    /// A run of the two units goes through: every unit succeeds.
    fn assert_a_run_succeeds(&self) {
        let status = self.run();
        assert!(
            status
                .units
                .iter()
                .all(|u| u.state == proto_types::UnitState::Succeeded),
            "{status:#?}"
        );
    }

    /// The deploy branch orchestrator's push run over the two units, followed to its end.
    fn run(&self) -> proto_types::RunStatus {
        let orchestrator = self.access.url("orchestrator-deploy");
        let range = (self.commits.0.as_str(), self.commits.1.as_str());
        follow_to_end(&self.sandbox, orchestrator.as_str(), range, "push", 0).0
    }
}

fn refused(result: Result<impl std::fmt::Debug, BrokerError>, what: &str) {
    match result {
        Err(BrokerError::Refused { .. }) => {}
        other => panic!("{what}: expected the broker to refuse, got {other:?}"),
    }
}

fn change_event(id: Uuid, unit: &str) -> ChangeEvent {
    ChangeEvent {
        id,
        repository: "infra".into(),
        trigger: Trigger::PullRequest {
            number: Some(1),
            base_branch: "main".into(),
            head_branch: "x".into(),
        },
        base_sha: "a".repeat(40),
        head_sha: "b".repeat(40),
        changes: vec![Change {
            kind: ChangeKind::UnitChanged,
            units: vec![unit.into()],
            files: vec![],
        }],
        dependencies: vec![],
    }
}

#[test]
fn each_component_user_can_do_its_job_and_nothing_more() {
    let mut world = world();
    // The whole pipeline works with least privileges: orchestrate, dispatch, execute in two accounts.
    let status = world.run();
    assert!(
        status.state.is_final()
            && status
                .units
                .iter()
                .all(|u| u.state == proto_types::UnitState::Succeeded),
        "{status:#?}"
    );

    let orchestrator = world.connect("orchestrator");
    refused(
        world.publish(
            &orchestrator,
            Route::Jobs {
                account: "dev",
                role: ExecutorRole::Apply,
            },
            b"x",
            None,
        ),
        "the orchestrator publishing a job",
    );
    let orchestrator = world.connect("orchestrator");
    refused(
        world.consume(&orchestrator, "jobs.dev.apply"),
        "the orchestrator consuming jobs.dev.apply",
    );
    let executor = world.connect("executor-dev-apply");
    refused(
        world.consume(&executor, "jobs.prod.apply"),
        "the dev executor consuming jobs.prod.apply",
    );
    let executor = world.connect("executor-dev-apply");
    refused(
        world.publish(&executor, Route::Changes, b"x", None),
        "an executor submitting a change",
    );
    // The web page's actions reach the dispatcher in process: its own login cannot send
    // control orders (so it cannot approve as the page's users either).
    let dispatcher = world.connect("dispatcher");
    refused(
        world.publish(&dispatcher, Route::Control, b"x", None),
        "the dispatcher publishing to the control exchange",
    );

    // RabbitMQ checks who publishes: a forged user_id is refused outright.
    let orchestrator = world.connect("orchestrator");
    let forged = change_event(Uuid::new_v4(), "dev/app").encode();
    let dispatcher_user = world.access.user("dispatcher");
    refused(
        world.publish(
            &orchestrator,
            Route::Changes,
            &forged,
            Some(&dispatcher_user),
        ),
        "a forged user_id",
    );

    // A well-formed change event from a user that is not an orchestrator (here the admin, who
    // may publish anywhere) is dead-lettered by the dispatcher, saying why.
    let admin = world.connect("admin");
    let from_admin = change_event(Uuid::new_v4(), "dev/app").encode();
    world
        .publish(&admin, Route::Changes, &from_admin, None)
        .unwrap();
    let dead = world.dead_letters("pipelines.changes", 1);
    let expected = format!(
        "change event from broker user \"{}\": only {}, {} may submit runs",
        world.access.user("admin"),
        world.access.user("orchestrator"),
        world.access.user("orchestrator-deploy")
    );
    assert_eq!(dead[0].1, expected);

    // The pull requests' orchestrator (whose login their CI holds) cannot ask for applies: its
    // push event is dead-lettered, saying who may.
    let orchestrator = world.connect("orchestrator");
    let mut push = change_event(Uuid::new_v4(), "dev/app");
    push.trigger = Trigger::Push {
        branch: "main".into(),
    };
    world
        .publish(&orchestrator, Route::Changes, &push.encode(), None)
        .unwrap();
    let dead = world.dead_letters("pipelines.changes", 1);
    let expected = format!(
        "push event from broker user \"{}\": only {} may submit runs of the deploy branch \
         (dispatcher.deploy_orchestrator_users)",
        world.access.user("orchestrator"),
        world.access.user("orchestrator-deploy")
    );
    assert_eq!(dead[0].1, expected);
    world.deployment.assert_running();
}

/// Headers whose `x-padding` takes `padding` bytes, beside a trace context.
fn padded(padding: usize) -> Headers {
    Headers::from([
        ("x-padding".to_owned(), "p".repeat(padding)),
        (
            "traceparent".to_owned(),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned(),
        ),
    ])
}

/// A publisher that raises its frame size may send headers larger than the 16 KiB frames of
/// the other components, or that leave no room beside them for a dead letter's reason in a
/// 128 KiB frame. The dispatcher reads them, its dead-letter copy goes out with the body and
/// the reason (the headers left out), and its publishing goes on.
#[test]
fn a_message_with_headers_past_the_dispatchers_frame_is_dead_lettered_with_its_reason() {
    let mut world = world();
    let garbage = b"\x01not bincode at all".to_vec();
    let publish = |broker: &Broker, padding: usize| {
        let headers = padded(padding);
        world
            .runtime
            .block_on(broker.publish(Route::Changes, Outgoing::new(&garbage, "big", &headers)))
    };
    // Past the 16 KiB the other components read.
    publish(&world.connect_with_big_frames(), 60_000).unwrap();
    // Headers that leave less room in a 128 KiB frame than a dead letter's reason takes;
    // RabbitMQ adds a few bytes on delivery, so 64 fewer than the most a frame holds.
    let filling = world.most_padding_in_a_frame() - 64;
    publish(&world.connect_with_big_frames(), filling).unwrap();
    for padding in [60_000, filling] {
        let dead = world.dead_letters_with_headers(
            &world.connect_with_big_frames(),
            "pipelines.changes",
            1,
        );
        let (body, headers) = &dead[0];
        assert_eq!(body, &garbage, "the body is kept whole");
        let reason = &headers[REASON_HEADER];
        assert!(reason.contains("malformed message body"), "{reason}");
        // The message's own headers are left out, saying how large they were.
        let bytes: usize = padded(padding).iter().map(|(k, v)| k.len() + v.len()).sum();
        let left_out = format!("{bytes} bytes of headers, more than the 16384 a dead letter keeps");
        assert_eq!(
            headers.get(broker::HEADERS_LEFT_OUT_HEADER),
            Some(&left_out),
            "{:?}",
            headers.keys().collect::<Vec<_>>()
        );
        assert!(!headers.contains_key("x-padding"));
    }
    // The dispatcher publishes on: a real run goes through.
    world.assert_a_run_succeeds();
    world.deployment.assert_running();
}

/// A change event whose headers fill a publisher's frame to its last bytes arrives as a frame
/// larger than the dispatcher accepts (RabbitMQ adds bytes on delivery), and the connection it
/// comes on closes at each delivery. That is the change events' own connection: the
/// dispatcher keeps its other one, opens this one again at once, and the message comes back
/// alone until the queue's delivery limit dead-letters it; a run whose event came after it
/// goes through.
#[test]
fn a_change_event_that_fills_its_frame_closes_only_the_change_events_connection() {
    let mut world = world();
    let most = world.most_padding_in_a_frame();
    let headers = padded(most);
    let body = change_event(Uuid::new_v4(), "dev/app").encode();
    let orchestrator = world.connect_with_big_frames();
    world
        .runtime
        // The message id the padding was measured with: the same frame, to the byte.
        .block_on(orchestrator.publish(Route::Changes, Outgoing::new(&body, "probe", &headers)))
        .unwrap();
    // Behind it in the queue: a push run over both units.
    world.assert_a_run_succeeds();
    // The broker dead-lettered it at its delivery limit, and it alone: the message is too
    // large for any reader here, so its queue's depth says so.
    let dead_letters = || {
        world
            .runtime
            .block_on(orchestrator.queue_depth("dead.pipelines.changes"))
            .unwrap()
    };
    poll_until(DEADLINE, "the message in dead.pipelines.changes", || {
        (dead_letters() > 0).then_some(())
    });
    assert_eq!(dead_letters(), 1, "only the message that fills its frame");
    // It closed the connection it came on (so this test tests what it says) once at each
    // delivery: it came back alone each time, until its returns passed the delivery limit
    // (RabbitMQ dead-letters a message returned more often than that).
    let expected = broker::topology::DELIVERY_LIMIT as usize + 1;
    let closes = || {
        let log = world.deployment.dispatcher_log();
        log.matches("The connection for change events failed")
            .count()
    };
    poll_until(DEADLINE, "every close in the dispatcher's log", || {
        (closes() >= expected).then_some(())
    });
    assert_eq!(closes(), expected, "{}", world.deployment.dispatcher_log());
    // Claims, job events and publishing never lost their connection.
    let log = world.deployment.dispatcher_log();
    assert!(!log.contains("Lost the broker"), "{log}");
    world.deployment.assert_running();
}

#[test]
fn malformed_oversized_and_wrong_version_messages_are_dead_lettered_and_consumers_go_on() {
    let mut world = world();
    let admin = world.connect("admin");
    let valid = change_event(Uuid::new_v4(), "dev/app").encode();
    let mut wrong_version = valid.clone();
    wrong_version[0] = 2;
    let oversized = vec![1_u8; proto_types::MAX_MESSAGE_BYTES + 1];
    let garbage = b"\x01not bincode at all".to_vec();
    for body in [&garbage, &oversized, &wrong_version] {
        world.publish(&admin, Route::Changes, body, None).unwrap();
        world
            .publish(
                &admin,
                Route::Jobs {
                    account: "dev",
                    role: ExecutorRole::Apply,
                },
                body,
                None,
            )
            .unwrap();
        world.publish(&admin, Route::JobEvents, body, None).unwrap();
        world.publish(&admin, Route::Claims, body, None).unwrap();
    }
    // The consumers went on: a real run after the bad messages goes through.
    world.assert_a_run_succeeds();

    let expected = [
        "malformed message body",
        "exceeds the limit of 16777216 bytes",
        "unsupported message format 2",
    ];
    for queue in [
        "pipelines.changes",
        "jobs.dev.apply",
        "pipelines.job-events",
        "pipelines.claims",
    ] {
        let dead: BTreeMap<usize, String> = world
            .dead_letters(queue, 3)
            .into_iter()
            .map(|(body, reason)| (body.len(), reason))
            .collect();
        assert_eq!(dead.len(), 3, "{queue}: {dead:?}");
        for needle in expected {
            assert!(
                dead.values().any(|reason| reason.contains(needle)),
                "{queue}: no dead letter says {needle:?}: {dead:?}"
            );
        }
        assert_eq!(
            dead.get(&oversized.len())
                .map(|r| r.contains("exceeds the limit")),
            Some(true),
            "the oversized body is kept whole"
        );
    }
    world.deployment.assert_running();
}

#[test]
fn the_plan_user_cannot_consume_the_apply_queue_and_the_reverse() {
    let mut world = world();
    for account in ["dev", "prod"] {
        for (user, queue) in [("plan", "apply"), ("apply", "plan")] {
            let broker = world.connect(&format!("executor-{account}-{user}"));
            refused(
                world.consume(&broker, &format!("jobs.{account}.{queue}")),
                &format!("the {account} {user} worker consuming jobs.{account}.{queue}"),
            );
        }
        // Each can read its own queue (the check above is not refused for everything).
        for role in ["plan", "apply"] {
            let broker = world.connect(&format!("executor-{account}-{role}"));
            let own = world.consume(&broker, &format!("jobs.{account}.{role}"));
            assert!(own.is_ok(), "{account} {role}: {:?}", own.err());
            world.runtime.block_on(broker.close());
        }
    }
    world.deployment.assert_running();

    // An executor given its password through its environment refuses to start.
    let url = world.access.url("executor-dev-plan");
    let config = world.sandbox.path().join("pipelines.toml");
    let mut command = harness::sandbox::pipelines_in(
        world.sandbox.path(),
        &[
            "execute",
            "--config",
            config.to_str().unwrap(),
            "--account",
            "dev",
            "--role",
            "plan",
        ],
    );
    command.env("PIPELINES_BROKER_URL", &url);
    let refused_start = harness::process::run(command, DEADLINE);
    assert_eq!(
        refused_start.code(),
        Some(2),
        "{}",
        refused_start.transcript()
    );
    let transcript = refused_start.transcript();
    assert!(
        transcript.contains("carries a password") && !transcript.contains("dev-executor-dev-plan"),
        "{transcript}"
    );
}

/// Job events are bound to the broker user that sent them (`dispatcher.executor_users`): an
/// executor login of another account, or of the other role, cannot claim a queued job first
/// nor report a result for it. The job then runs on its own worker.
#[test]
fn a_job_event_from_another_accounts_or_roles_executor_is_dead_lettered_and_the_job_runs_on_its_own()
 {
    // No dev apply worker yet: dev/app's apply job waits in its queue, active and unclaimed.
    let mut world = world_without(&["dev-apply"]);
    let orchestrator = world.access.url("orchestrator-deploy");
    let range = (world.commits.0.as_str(), world.commits.1.as_str());
    let run = harness::runs::submit(&world.sandbox, orchestrator.as_str(), range, "push", &[]);
    let job_id = harness::poll_until(DEADLINE, "dev/app's job to be queued", || {
        let detail = harness::runs::status(&world.sandbox, run)?;
        detail
            .jobs
            .iter()
            .find(|job| job.unit == "dev/app")
            .map(|job| job.job_id)
    });
    let event = |kind: JobEventKind| {
        JobEvent {
            job_id,
            run_id: run,
            attempt: 1,
            // Not the real worker's name: had a forged claim been granted, mallory would hold
            // the job, the real worker would be refused, and mallory's outcome would end it.
            worker: "mallory".into(),
            kind,
        }
        .encode()
    };
    let succeeded = JobOutcome {
        status: JobStatus::Succeeded,
        exit_code: Some(0),
        resource_changes: None,
        output: "forged".into(),
        duration_ms: 1,
        log: None,
        policy: None,
        drift: None,
    };
    for sender in ["executor-prod-apply", "executor-dev-plan"] {
        let broker = world.connect(sender);
        // A claim as a worker sends it, with a reply queue of the sender's own.
        let replies = world.runtime.block_on(broker.reply_queue()).unwrap();
        let claim = event(JobEventKind::Started { redelivered: false });
        let headers = Headers::new();
        let message = Outgoing {
            reply_to: Some(replies.queue()),
            ..Outgoing::new(&claim, "forged-claim", &headers)
        };
        world
            .runtime
            .block_on(broker.send_unconfirmed(&[(Route::Claims, message)]))
            .unwrap();
        world
            .publish(
                &broker,
                Route::JobEvents,
                &event(JobEventKind::Finished(succeeded.clone())),
                None,
            )
            .unwrap();
        let expected = format!(
            "job event about job {job_id} of account \"dev\" (apply) sent by broker user \"{}\"; only \"{}\" may send it (dispatcher.executor_users)",
            world.access.user(sender),
            world.access.user("executor-dev-apply")
        );
        for queue in ["pipelines.claims", "pipelines.job-events"] {
            let dead = world.dead_letters(queue, 1);
            assert_eq!(dead[0].1, expected, "{queue}");
        }
    }

    world.start_executor("dev", "apply");
    let detail = harness::runs::wait_final(&world.sandbox, run);
    assert_eq!(detail.run.state, "succeeded", "{detail:#?}");
    // Run by its own worker, not ended by mallory's outcome.
    harness::runs::assert_job(&detail, "dev/app", "succeeded", "dev-apply-1", 1);
    world.deployment.assert_running();
}

/// Log chunks are bound to the broker user that sent them too: an executor login of another
/// account or role that knows a finished job's id, attempt, stream and worker (all on the web
/// page) cannot overwrite the dispatcher's copy of its log. The job's own chunks went in. A
/// chunk of the holder's that waits for bytes that never come is dead-lettered saying so.
#[test]
fn a_log_chunk_from_another_accounts_or_roles_executor_or_that_never_fits_is_dead_lettered_saying_why_and_the_log_is_kept()
 {
    let mut world = world();
    let orchestrator = world.access.url("orchestrator-deploy");
    let range = (world.commits.0.as_str(), world.commits.1.as_str());
    let run = harness::runs::submit(&world.sandbox, orchestrator.as_str(), range, "push", &[]);
    let detail = harness::runs::wait_final(&world.sandbox, run);
    assert_eq!(detail.run.state, "succeeded", "{detail:#?}");
    let job = harness::runs::job(&detail, "prod/app");
    // The job's own worker streamed its log to the end, through the same check.
    let (log, end) = harness::runs::stored_log(&world.sandbox, run, job.job_id);
    assert!(end.starts_with("complete"), "{end}");
    let kept = std::fs::read_to_string(&log).unwrap();
    assert!(!kept.is_empty(), "the worker's log is empty");
    let name = log.file_stem().unwrap().to_str().unwrap();
    let mut parts = name.splitn(3, '-');
    let (attempt, stream, worker) = (
        parts.next().unwrap().parse().unwrap(),
        parts.next().unwrap().parse().unwrap(),
        parts.next().unwrap().to_owned(),
    );
    assert_eq!(worker, "prod-apply-1");

    let forged = proto_types::LogChunk {
        job_id: job.job_id,
        run_id: run,
        attempt,
        worker,
        stream,
        offset: 0,
        text: "Apply complete! Resources: 0 added. Nothing to see here.\n".repeat(8),
        end: true,
    };
    for sender in ["executor-prod-plan", "executor-dev-apply"] {
        let broker = world.connect(sender);
        world
            .publish(&broker, Route::Logs, &forged.encode(), None)
            .unwrap();
        let dead = world.dead_letters("pipelines.logs", 1);
        let expected = format!(
            "a log chunk of job {} attempt {attempt} from worker \"prod-apply-1\": sent by broker user \"{}\"; only \"{}\" may write the logs of account \"prod\" (apply) (dispatcher.executor_users)",
            job.job_id,
            world.access.user(sender),
            world.access.user("executor-prod-apply")
        );
        assert_eq!(dead[0].1, expected);
    }
    // The holder's own chunk far past the log's end waits for bytes that never come: on its
    // last delivery it is dead-lettered saying so, not dropped there by the broker unexplained.
    let early = proto_types::LogChunk {
        offset: 1 << 20,
        end: false,
        ..forged.clone()
    };
    let holder = world.connect("executor-prod-apply");
    world
        .publish(&holder, Route::Logs, &early.encode(), None)
        .unwrap();
    let dead = world.dead_letters("pipelines.logs", 1);
    assert!(
        dead[0]
            .1
            .starts_with(&format!("a chunk at byte {} of a log of ", 1 << 20))
            && dead[0]
                .1
                .ends_with("waits for the bytes before it, which did not come in 10 deliveries"),
        "{}",
        dead[0].1
    );
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        kept,
        "the log changed"
    );
    world.deployment.assert_running();
}
