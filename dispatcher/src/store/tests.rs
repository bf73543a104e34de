//! The run database against real SQLite files and real PostgreSQL databases: every test of
//! what the store keeps runs on both engines.

use proto_types::JobStatus;

use super::*;
use crate::scheduler::{Effects, Scheduler};
use crate::testing::{event, outcome, pr, push, settings};

/// One engine's database for one test: a SQLite file in a temporary directory, or a
/// PostgreSQL database of its own on the local server.
enum Engine {
    Sqlite(tempfile::TempDir),
    Postgres(ScratchDatabase),
}

impl Engine {
    fn sqlite() -> Engine {
        Engine::Sqlite(tempfile::tempdir().unwrap())
    }

    fn postgres() -> Engine {
        Engine::Postgres(ScratchDatabase::create().unwrap_or_else(|err| panic!("{err}")))
    }

    fn location(&self) -> StoreLocation {
        match self {
            Engine::Sqlite(dir) => StoreLocation::state_dir(dir.path()),
            Engine::Postgres(database) => database.location().clone(),
        }
    }

    /// Opens the database again: a new connection, as a restarted dispatcher makes.
    fn open(&self) -> Store {
        Store::connect(&self.location()).unwrap()
    }
}

/// Each test named runs once per engine: `sqlite::name` and `postgres::name`.
macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[test]
            fn $name() {
                super::$name(&super::Engine::sqlite());
            })*
        }
        mod postgres {
            $(#[test]
            fn $name() {
                super::$name(&super::Engine::postgres());
            })*
        }
    };
}

on_both_engines!(
    committed_runs_come_back_exactly_after_reopening_the_database,
    the_outbox_keeps_one_status_per_run_and_forgets_what_was_published,
    final_runs_are_not_loaded_but_stay_known_and_listed,
    unreported_runs_are_the_recent_final_ones_never_marked,
    pruning_forgets_old_finished_runs_and_keeps_recent_and_active_ones,
    a_runs_phase_is_read_without_its_jobs_and_an_unknown_run_has_none,
    a_final_drift_check_is_kept_as_its_units_finding_in_the_same_transaction,
    read_only_connections_read_and_cannot_write,
    the_web_pages_queries_filter_runs_and_find_a_jobs_run_and_worker,
    a_commits_pull_requests_are_those_whose_newest_run_is_on_it,
);

fn commit(store: &mut Store, scheduler: &Scheduler, effects: &Effects, now: u64) {
    crate::testing::commit(store, scheduler, effects, &[], now);
}

fn committed_runs_come_back_exactly_after_reopening_the_database(engine: &Engine) {
    let mut store = engine.open();
    let mut scheduler = Scheduler::new(settings());
    let now = 1_000_000;
    let first = event(
        push(),
        &[
            ("app", Action::Apply),
            ("db", Action::Apply),
            ("old", Action::Destroy),
        ],
        &[("app", "db")],
    );
    let second = event(pr(4), &[("app", Action::Plan)], &[]);
    let effects = scheduler.accept(&first.0, &first.1, now);
    commit(&mut store, &scheduler, &effects, now);
    let effects = scheduler.accept(&second.0, &second.1, now);
    commit(&mut store, &scheduler, &effects, now);
    let db = effects
        .publish
        .iter()
        .chain(std::iter::empty())
        .find(|j| j.unit == "app")
        .unwrap()
        .clone();
    let (_, claimed) = scheduler.claim(db.job_id, 1, "w1", false, Some("amq.gen-w1"), now + 1);
    commit(&mut store, &scheduler, &claimed, now + 1);
    let finished = scheduler.finish(
        db.job_id,
        1,
        "w1",
        &outcome(JobStatus::Failed, "Error: boom\n"),
        now + 2,
    );
    commit(&mut store, &scheduler, &finished, now + 2);
    drop(store);

    let store = engine.open();
    let (loaded, next_seq) = store.load_active().unwrap();
    let expected: Vec<Run> = scheduler
        .runs()
        .filter(|run| !run.is_final())
        .cloned()
        .collect();
    assert_eq!(loaded.len(), expected.len());
    for (mut loaded, expected) in loaded.into_iter().zip(expected) {
        loaded.open_non_destroy = expected.open_non_destroy;
        assert_eq!(
            loaded, expected,
            "run {} changed on the way through the database",
            expected.run_id
        );
    }
    assert_eq!(next_seq, 3);
}

fn the_outbox_keeps_one_status_per_run_and_forgets_what_was_published(engine: &Engine) {
    let mut store = engine.open();
    let mut scheduler = Scheduler::new(settings());
    let (event, plan) = event(push(), &[("a", Action::Apply), ("b", Action::Apply)], &[]);
    let effects = scheduler.accept(&event, &plan, 1);
    commit(&mut store, &scheduler, &effects, 1);
    let job = effects.publish[0].clone();
    let (_, claimed) = scheduler.claim(job.job_id, 1, "w1", false, Some("amq.gen-w1"), 2);
    commit(&mut store, &scheduler, &claimed, 2);

    let outbox = store.outbox(100).unwrap();
    let kinds: Vec<&OutboxTarget> = outbox.iter().map(|m| &m.target).collect();
    assert_eq!(
        kinds,
        [
            &OutboxTarget::Jobs {
                account: "dev".into(),
                role: proto_types::ExecutorRole::Apply,
            },
            &OutboxTarget::Jobs {
                account: "dev".into(),
                role: proto_types::ExecutorRole::Apply,
            },
            &OutboxTarget::Status { run_id: event.id }
        ],
        "two jobs, and the newest of two statuses"
    );
    let status = proto_types::RunStatus::decode(&outbox[2].body).unwrap();
    assert_eq!(
        status
            .units
            .iter()
            .filter(|u| u.state == UnitState::Running)
            .count(),
        1,
        "the status is the newer snapshot"
    );
    assert_eq!(
        outbox[0].message_id,
        format!("{}/1", outbox_job(&outbox[0]).job_id)
    );
    assert!(
        outbox[0]
            .trace
            .as_deref()
            .is_some_and(|t| t.starts_with("00-0af76519")),
        "the trace travels with the job"
    );

    store.delete_outbox(&[outbox[0].id, outbox[2].id]).unwrap();
    let left: Vec<i64> = store.outbox(100).unwrap().iter().map(|m| m.id).collect();
    assert_eq!(left, [outbox[1].id]);
}

fn outbox_job(message: &OutboxMessage) -> Job {
    Job::decode(&message.body).unwrap()
}

fn final_runs_are_not_loaded_but_stay_known_and_listed(engine: &Engine) {
    let mut store = engine.open();
    let mut scheduler = Scheduler::new(settings());
    let (done, plan) = event(push(), &[("app", Action::Apply)], &[]);
    let effects = scheduler.accept(&done, &plan, 1_000);
    commit(&mut store, &scheduler, &effects, 1_000);
    let job = effects.publish[0].clone();
    let (_, claimed) = scheduler.claim(job.job_id, 1, "w1", false, Some("amq.gen-w1"), 2_000);
    commit(&mut store, &scheduler, &claimed, 2_000);
    let finished = scheduler.finish(
        job.job_id,
        1,
        "w1",
        &outcome(JobStatus::Failed, "Error: boom\n"),
        3_000,
    );
    commit(&mut store, &scheduler, &finished, 3_000);
    let (bad, _) = event(push(), &[], &[]);
    let rejected = scheduler.reject(&bad, "unknown repository \"x\"", 4_000);
    commit(&mut store, &scheduler, &rejected, 4_000);

    assert!(store.load_active().unwrap().0.is_empty());
    assert_eq!(
        store.known_run(done.id).unwrap(),
        Some(KnownRun { rejected: None })
    );
    assert_eq!(
        store.known_run(bad.id).unwrap(),
        Some(KnownRun {
            rejected: Some("unknown repository \"x\"".into())
        })
    );
    assert_eq!(store.known_run(Uuid::new_v4()).unwrap(), None);
    assert_eq!(
        store.job_state(job.job_id).unwrap().as_deref(),
        Some("failed")
    );
    assert_eq!(store.job_state(Uuid::new_v4()).unwrap(), None);

    let runs = store.list_runs(10).unwrap();
    assert_eq!(
        runs.iter().map(|r| r.run_id).collect::<Vec<_>>(),
        [bad.id, done.id],
        "newest first"
    );
    assert_eq!(
        (runs[1].state.as_str(), runs[1].reason.as_deref()),
        ("failed", Some("1 of 1 jobs failed, 0 skipped"))
    );
    assert_eq!(runs[1].jobs.get("failed"), Some(&1));
    assert_eq!(runs[0].state, "rejected");

    let detail = store.run_detail(&done.id.to_string()[..8], 5_000).unwrap();
    assert_eq!(detail.run.run_id, done.id);
    let job = &detail.jobs[0];
    assert_eq!(
        (
            job.unit.as_str(),
            job.state.as_str(),
            job.attempt,
            job.worker.as_deref()
        ),
        ("app", "failed", 1, Some("w1"))
    );
    assert_eq!(job.reason.as_deref(), Some("exit code 1: Error: boom"));
    assert_eq!(job.duration_ms, Some(1_234));
    assert!(matches!(
        store.run_detail("zz", 0),
        Err(StoreError::UnknownRun(_))
    ));
    assert!(matches!(
        store.run_detail(&Uuid::new_v4().to_string(), 0),
        Err(StoreError::UnknownRun(_))
    ));
}

#[test]
fn a_database_from_a_newer_version_is_refused_naming_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path()).unwrap());
    let connection = Connection::open(dir.path().join(DATABASE_FILE)).unwrap();
    connection
        .execute_batch("PRAGMA user_version = 99")
        .unwrap();
    drop(connection);
    let err = Store::open(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("schema version 99") && err.contains(&format!("up to {SCHEMA_VERSION}")),
        "{err}"
    );
}

#[test]
fn a_version_1_database_is_migrated_keeping_its_runs() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let mut scheduler = Scheduler::new(settings());
    let (event, plan) = event(push(), &[("app", Action::Plan)], &[]);
    let effects = scheduler.accept(&event, &plan, 1_000);
    commit(&mut store, &scheduler, &effects, 1_000);
    drop(store);
    // Back to version 1, its rows kept: without the columns later versions added.
    let connection = Connection::open(dir.path().join(DATABASE_FILE)).unwrap();
    connection
        .execute_batch(
            "ALTER TABLE runs DROP COLUMN reported_ms;
             ALTER TABLE jobs DROP COLUMN policy;
             ALTER TABLE jobs DROP COLUMN approval;
             ALTER TABLE jobs DROP COLUMN policy_override;
             ALTER TABLE jobs DROP COLUMN drift;
             DROP TABLE drift_units;
             DROP TABLE drift_reports;
             PRAGMA user_version = 1;",
        )
        .unwrap();
    drop(connection);

    let mut store = Store::open(dir.path()).unwrap();
    assert_eq!(store.list_runs(10).unwrap()[0].run_id, event.id);
    store.mark_reported(event.id, 2_000).unwrap();
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.sqlite_version().unwrap(), SCHEMA_VERSION);
}

fn unreported_runs_are_the_recent_final_ones_never_marked(engine: &Engine) {
    let mut store = engine.open();
    let mut scheduler = Scheduler::new(settings());
    let mut accept = |units: &[(&str, Action)], now: u64| {
        let (event, plan) = event(push(), units, &[]);
        let effects = scheduler.accept(&event, &plan, now);
        commit(&mut store, &scheduler, &effects, now);
        event.id
    };
    // Nothing to do: final at once. A plan job: running until it finishes.
    let old = accept(&[], 1_000);
    let done = accept(&[], 5_000);
    let marked = accept(&[], 5_000);
    let running = accept(&[("app", Action::Plan)], 5_000);
    store.mark_reported(marked, 6_000).unwrap();
    // Marking a run that is not final changes nothing.
    store.mark_reported(running, 6_000).unwrap();
    assert_eq!(store.unreported_runs(2_000, 100).unwrap(), vec![done]);
    assert_eq!(store.unreported_runs(0, 100).unwrap(), vec![old, done]);
    assert_eq!(store.unreported_runs(0, 1).unwrap(), vec![old]);
}

fn a_commits_pull_requests_are_those_whose_newest_run_is_on_it(engine: &Engine) {
    let mut store = engine.open();
    let mut scheduler = Scheduler::new(settings());
    let (b, c) = ("b".repeat(40), "c".repeat(40));
    let mut accept = |trigger, head: &str, now: u64| {
        let (mut event, plan) = event(trigger, &[], &[]);
        event.head_sha = head.to_owned();
        let effects = scheduler.accept(&event, &plan, now);
        commit(&mut store, &scheduler, &effects, now);
        event.id
    };
    let three_at_b = accept(pr(3), &b, 1_000);
    let four_at_b = accept(pr(4), &b, 2_000);
    accept(push(), &b, 3_000);
    let four_again_at_b = accept(pr(4), &b, 4_000);
    accept(pr(5), &b, 5_000);
    let five_at_c = accept(pr(5), &c, 6_000);
    // PR 4 ran twice at b (its newer run counts); PR 5 moved on to c; pushes have no plan status.
    assert_eq!(
        store.pull_request_runs_on("infra", &b).unwrap(),
        vec![three_at_b, four_again_at_b]
    );
    assert_eq!(
        store.pull_request_runs_on("infra", &c).unwrap(),
        vec![five_at_c]
    );
    assert_eq!(
        store.pull_request_runs_on("other", &b).unwrap(),
        Vec::<Uuid>::new()
    );
    assert_eq!(
        store.previous_head("infra", 5, five_at_c).unwrap(),
        Some(b.clone())
    );
    assert_eq!(
        store.previous_head("infra", 4, four_again_at_b).unwrap(),
        Some(b)
    );
    assert_eq!(store.previous_head("infra", 3, three_at_b).unwrap(), None);
    assert_eq!(store.previous_head("infra", 4, four_at_b).unwrap(), None);
}

#[test]
fn reading_a_missing_database_says_where_it_looked() {
    let dir = tempfile::tempdir().unwrap();
    let err = Store::open_read_only(&dir.path().join("nowhere"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("nowhere/dispatcher.sqlite3") && err.contains("has a dispatcher"),
        "{err}"
    );
}

fn pruning_forgets_old_finished_runs_and_keeps_recent_and_active_ones(engine: &Engine) {
    let mut store = engine.open();
    let mut scheduler = Scheduler::new(settings());
    let day = 24 * 3600 * 1000;
    // An old finished run, a recent finished one, and an old one still running.
    let finish = |scheduler: &mut Scheduler, store: &mut Store, at: u64| {
        let (event, plan) = event(push(), &[("app", Action::Apply)], &[]);
        let effects = scheduler.accept(&event, &plan, at);
        commit(store, scheduler, &effects, at);
        let job = effects.publish[0].clone();
        let (_, claimed) = scheduler.claim(job.job_id, 1, "w1", false, Some("amq.gen-w1"), at);
        commit(store, scheduler, &claimed, at);
        let finished = scheduler.finish(
            job.job_id,
            1,
            "w1",
            &outcome(JobStatus::Succeeded, "ok\n"),
            at,
        );
        commit(store, scheduler, &finished, at);
        (event.id, job.job_id)
    };
    let (old, old_job) = finish(&mut scheduler, &mut store, day);
    let (recent, _) = finish(&mut scheduler, &mut store, 40 * day);
    let (running, plan) = event(pr(9), &[("db", Action::Plan)], &[]);
    let effects = scheduler.accept(&running, &plan, day);
    commit(&mut store, &scheduler, &effects, day);

    assert_eq!(store.prune_finished(30 * day).unwrap(), 1);
    assert_eq!(store.known_run(old).unwrap(), None);
    assert_eq!(store.job_state(old_job).unwrap(), None);
    assert!(store.known_run(recent).unwrap().is_some());
    assert!(store.known_run(running.id).unwrap().is_some());
    assert_eq!(store.load_active().unwrap().0.len(), 1);
    assert_eq!(store.prune_finished(30 * day).unwrap(), 0, "idempotent");
}

fn a_runs_phase_is_read_without_its_jobs_and_an_unknown_run_has_none(engine: &Engine) {
    let mut store = engine.open();
    let mut scheduler = Scheduler::new(settings());
    let run = event(pr(2), &[("app", Action::Plan)], &[]);
    let effects = scheduler.accept(&run.0, &run.1, 1_000);
    commit(&mut store, &scheduler, &effects, 1_000);
    assert_eq!(store.run_phase(run.0.id).unwrap(), Some(RunPhase::Running));
    let job = effects.publish[0].clone();
    let (_, claimed) = scheduler.claim(job.job_id, 1, "w1", false, Some("amq.gen-w1"), 1_001);
    commit(&mut store, &scheduler, &claimed, 1_001);
    let finished = scheduler.finish(
        job.job_id,
        1,
        "w1",
        &outcome(JobStatus::Failed, "boom"),
        1_002,
    );
    commit(&mut store, &scheduler, &finished, 1_002);
    assert_eq!(store.run_phase(run.0.id).unwrap(), Some(RunPhase::Failed));
    assert_eq!(store.run_phase(Uuid::new_v4()).unwrap(), None);
}

fn a_final_drift_check_is_kept_as_its_units_finding_in_the_same_transaction(engine: &Engine) {
    let mut store = engine.open();
    let mut scheduler = Scheduler::new(settings());
    let trigger = proto_types::Trigger::Drift {
        branch: "main".into(),
    };
    let (event, plan) = event(trigger, &[("app", Action::DriftPlan)], &[]);
    let effects = scheduler.accept(&event, &plan, 1_000);
    commit(&mut store, &scheduler, &effects, 1_000);
    assert!(store.drift_running("infra").unwrap());
    assert!(
        store.drift_units(None).unwrap().is_empty(),
        "nothing found yet"
    );
    let job = effects.publish[0].clone();
    scheduler.claim(job.job_id, 1, "w1", false, Some("amq.gen-w1"), 1_100);
    let mut outcome = outcome(JobStatus::Succeeded, "plan");
    outcome.exit_code = Some(2);
    outcome.drift = Some(proto_types::DriftFindings {
        drifted: true,
        digest: "d1".into(),
        resources: vec!["terraform_data.x (update)".into()],
        more: 0,
    });
    let effects = scheduler.finish(job.job_id, 1, "w1", &outcome, 1_200);
    commit(&mut store, &scheduler, &effects, 1_200);

    let units = store.drift_units(Some("infra")).unwrap();
    assert_eq!(units.len(), 1);
    assert_eq!(units[0].state, proto_types::DriftState::Drifted);
    assert_eq!((units[0].unit.as_str(), units[0].since_ms), ("app", 1_200));
    assert!(store.drift_units(Some("other")).unwrap().is_empty());
    assert!(!store.drift_running("infra").unwrap());
    assert_eq!(
        store.drift_runs_ended().unwrap(),
        [("infra".to_owned(), 1_200)],
        "the run ended when its last check did"
    );
    assert_eq!(store.last_drift_run_ms("infra").unwrap(), Some(1_000));
    assert_eq!(store.last_drift_run_ms("other").unwrap(), None);
    // The job's findings survive a restart with the job.
    let detail = store.run_detail(&event.id.to_string(), 1_300).unwrap();
    assert_eq!(detail.jobs[0].drift.as_ref().map(|d| d.drifted), Some(true));

    assert_eq!(store.drift_report("infra").unwrap(), None);
    let report = DriftReport {
        issue: Some(42),
        notified: "drifted app d1".into(),
        pull_request: Some(43),
    };
    store.set_drift_report("infra", &report, 1_300).unwrap();
    assert_eq!(store.drift_report("infra").unwrap(), Some(report));
}

fn read_only_connections_read_and_cannot_write(engine: &Engine) {
    let mut store = engine.open();
    let mut scheduler = Scheduler::new(settings());
    let (event, plan) = event(push(), &[("app", Action::Apply)], &[]);
    let effects = scheduler.accept(&event, &plan, 1_000);
    commit(&mut store, &scheduler, &effects, 1_000);
    let mut reader = Store::connect_read_only(&engine.location()).unwrap();
    assert_eq!(reader.list_runs(10).unwrap()[0].run_id, event.id);
    let err = reader
        .mark_reported(event.id, 2_000)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("mark run reported") && err.contains("read"),
        "{err}"
    );
}

#[test]
fn a_postgres_database_from_a_newer_version_is_refused_naming_both_versions() {
    let engine = Engine::postgres();
    let store = engine.open();
    store
        .db
        .batch("test", "UPDATE pipelines_schema SET version = 99")
        .unwrap();
    drop(store);
    let err = Store::connect(&engine.location()).unwrap_err().to_string();
    assert!(
        err.contains("schema version 99") && err.contains(&format!("up to {SCHEMA_VERSION}")),
        "{err}"
    );
}

#[test]
fn dispatchers_starting_together_on_a_new_postgres_database_migrate_it_once() {
    let engine = Engine::postgres();
    let location = engine.location();
    // Eight connections create the schema at once: without the lock, all but one would fail
    // on "relation already exists".
    let opened: Vec<_> = std::thread::scope(|scope| {
        let starts: Vec<_> = (0..8)
            .map(|_| scope.spawn(|| Store::connect(&location).map(drop)))
            .collect();
        starts.into_iter().map(|s| s.join().unwrap()).collect()
    });
    for result in opened {
        result.unwrap();
    }
    assert_eq!(engine.open().postgres_version().unwrap(), SCHEMA_VERSION);
}

#[test]
fn a_store_location_is_a_postgres_url_or_a_sqlite_path_and_shows_no_password() {
    let postgres = StoreLocation::parse("postgres://pipelines:s3cret@db:5432/runs").unwrap();
    assert!(postgres.is_postgres());
    assert_eq!(postgres.to_string(), "postgres://pipelines@db:5432/runs");
    assert_eq!(
        StoreLocation::parse("sqlite:///var/lib/pipelines").unwrap(),
        StoreLocation::Sqlite("/var/lib/pipelines/dispatcher.sqlite3".into())
    );
    assert_eq!(
        StoreLocation::parse("sqlite:///backup/runs.sqlite3").unwrap(),
        StoreLocation::Sqlite("/backup/runs.sqlite3".into())
    );
    let err = StoreLocation::parse("mysql://db/runs").unwrap_err();
    assert!(err.contains("mysql://db/runs"), "{err}");
}

#[test]
fn one_dispatcher_leads_at_a_time_and_a_deposed_leaders_writes_are_fenced_off() {
    let engine = Engine::postgres();
    let first = engine.open();
    let second = engine.open();
    assert_eq!(first.leader().unwrap(), None, "nobody has led yet");
    let term = first
        .try_lead("first", 60_000)
        .unwrap()
        .expect("the lead is free");
    assert_eq!(second.try_lead("second", 60_000).unwrap(), None);
    assert_eq!(
        second.leader().unwrap(),
        Some(Leader {
            holder: "first".into(),
            term,
            current: true
        })
    );
    assert!(first.renew_lead("first", term, 60_000).unwrap());

    // The leader writes under its term.
    let mut leading = engine.open().fenced_by(term).unwrap();
    let mut scheduler = Scheduler::new(settings());
    let (run, plan) = event(push(), &[("app", Action::Apply)], &[]);
    let effects = scheduler.accept(&run, &plan, 1_000);
    commit(&mut leading, &scheduler, &effects, 1_000);

    // Its lease runs out (here: it is given up) and the second takes over.
    first.resign("first", term).unwrap();
    let taken = second
        .try_lead("second", 60_000)
        .unwrap()
        .expect("the lead is free again");
    assert!(taken > term);
    assert!(!first.renew_lead("first", term, 60_000).unwrap());

    // Whatever the deposed leader still writes is refused, and nothing of it lands.
    let (late, plan) = event(push(), &[("db", Action::Apply)], &[]);
    let effects = scheduler.accept(&late, &plan, 2_000);
    let err =
        crate::testing::try_commit(&mut leading, &scheduler, &effects, &[], 2_000).unwrap_err();
    assert!(
        matches!(&err, StoreError::Fenced { holder, term: t, ours } if holder == "second" && *t == taken && *ours == term),
        "{err:?}"
    );
    assert!(err.to_string().contains("steps down"), "{err}");
    assert_eq!(engine.open().known_run(late.id).unwrap(), None);
    assert!(leading.delete_outbox(&[1]).is_err());
    // The new leader writes under its own term.
    let mut new_leader = engine.open().fenced_by(taken).unwrap();
    commit(&mut new_leader, &scheduler, &effects, 2_000);
    assert!(engine.open().known_run(late.id).unwrap().is_some());
}

/// A leader that stalls inside a write transaction (SIGSTOP, a paused container, a network
/// that went silent) holds the leader row `FOR SHARE`, on which a takeover waits: the server
/// ends such a session, so the standby takes over once the lease ran out.
#[test]
fn a_leader_stalled_inside_a_transaction_does_not_keep_the_standby_from_taking_over() {
    let engine = Engine::postgres();
    let first = engine.open();
    let term = first
        .try_lead("first", 200)
        .unwrap()
        .expect("the lead is free");
    let stalled = engine.open().fenced_by(term).unwrap();
    // What the fencing check of a write transaction does first, and then nothing more: the
    // process stopped there.
    stalled
        .db
        .batch(
            "stall",
            "BEGIN; SELECT holder, term FROM dispatcher_leader WHERE id = 1 FOR SHARE",
        )
        .unwrap();
    let location = engine.location();
    let (taken, took) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let second = Store::connect(&location).unwrap();
        let term = loop {
            match second.try_lead("second", 60_000) {
                Ok(None) => std::thread::yield_now(),
                taken => break taken,
            }
        };
        let _ = taken.send(term);
    });
    let deadline = IDLE_IN_TRANSACTION * 4;
    let new_term = took
        .recv_timeout(deadline)
        .unwrap_or_else(|_| panic!("the standby could not take over within {deadline:?}"))
        .unwrap()
        .unwrap();
    assert!(new_term > term, "{new_term}");
    // The stalled session is gone: its transaction was rolled back with it.
    assert!(stalled.db.batch("wake up", "COMMIT").is_err());
    // Only the leader's fenced connection is bounded so: a store copy keeps its target's
    // transaction open while it reads each table of the source.
    let setting = |store: &Store| {
        store
            .db
            .query_row("show", "SHOW idle_in_transaction_session_timeout", &[])
            .unwrap()
            .unwrap()
            .get::<String>(0)
            .unwrap()
    };
    assert_eq!(setting(&engine.open()), "0");
    assert_eq!(setting(&engine.open().fenced_by(new_term).unwrap()), "5s");
}

#[test]
fn leadership_needs_a_shared_database() {
    let engine = Engine::sqlite();
    let err = engine.open().try_lead("me", 1_000).unwrap_err();
    assert!(matches!(err, StoreError::NotShared), "{err:?}");
}

#[test]
fn a_copy_from_sqlite_to_postgres_and_back_keeps_every_run_job_and_message() {
    let sqlite = Engine::sqlite();
    let mut source = sqlite.open();
    let mut scheduler = Scheduler::new(settings());
    let (done, plan) = event(push(), &[("app", Action::Apply)], &[]);
    let effects = scheduler.accept(&done, &plan, 1_000);
    commit(&mut source, &scheduler, &effects, 1_000);
    let job = effects.publish[0].clone();
    let (_, claimed) = scheduler.claim(job.job_id, 1, "w1", false, Some("amq.gen-w1"), 2_000);
    commit(&mut source, &scheduler, &claimed, 2_000);
    let finished = scheduler.finish(
        job.job_id,
        1,
        "w1",
        &outcome(JobStatus::Failed, "Error: boom\n"),
        3_000,
    );
    crate::testing::commit(
        &mut source,
        &scheduler,
        &finished,
        &[(job.job_id, "Error: boom".into())],
        3_000,
    );
    let (active, plan) = event(pr(7), &[("app", Action::Plan), ("db", Action::Plan)], &[]);
    let effects = scheduler.accept(&active, &plan, 4_000);
    commit(&mut source, &scheduler, &effects, 4_000);
    source
        .set_drift_report("infra", &DriftReport::default(), 4_000)
        .unwrap();

    let postgres = Engine::postgres();
    let target = postgres.open();
    let mut heard = Vec::new();
    let copied = source
        .copy_into(&target, |table, rows| heard.push((table.to_owned(), rows)))
        .unwrap();
    assert_eq!(copied.len(), heard.len());
    assert_eq!(copied[0], ("runs", 2));
    assert_eq!(copied[1], ("jobs", 3));

    let same = |a: &Store, b: &Store| {
        assert_eq!(a.load_active().unwrap(), b.load_active().unwrap());
        assert_eq!(a.list_runs(10).unwrap(), b.list_runs(10).unwrap());
        assert_eq!(
            a.run_detail(&done.id.to_string(), 5_000).unwrap(),
            b.run_detail(&done.id.to_string(), 5_000).unwrap()
        );
        assert_eq!(a.outputs(done.id).unwrap(), b.outputs(done.id).unwrap());
        let bodies = |store: &Store| -> Vec<(String, Vec<u8>)> {
            store
                .outbox(100)
                .unwrap()
                .into_iter()
                .map(|m| (m.message_id, m.body))
                .collect()
        };
        assert_eq!(bodies(a), bodies(b));
        assert_eq!(
            a.drift_report("infra").unwrap(),
            b.drift_report("infra").unwrap()
        );
    };
    same(&source, &target);

    // And back, into an empty SQLite file; never into a database that has runs.
    let back = Engine::sqlite();
    target.copy_into(&back.open(), |_, _| {}).unwrap();
    same(&source, &back.open());
    let err = source.copy_into(&target, |_, _| {}).unwrap_err();
    assert!(matches!(err, StoreError::NotEmpty { runs: 2 }), "{err:?}");
}

fn the_web_pages_queries_filter_runs_and_find_a_jobs_run_and_worker(engine: &Engine) {
    let mut store = engine.open();
    let mut scheduler = Scheduler::new(settings());
    let (push_run, plan) = event(push(), &[("app", Action::Apply)], &[]);
    let effects = scheduler.accept(&push_run, &plan, 1_000);
    commit(&mut store, &scheduler, &effects, 1_000);
    let job = effects.publish[0].clone();
    let (_, claimed) = scheduler.claim(job.job_id, 1, "w1", false, Some("amq.gen-w1"), 1_100);
    commit(&mut store, &scheduler, &claimed, 1_100);
    let (pr_run, plan) = event(pr(12), &[("db", Action::Plan)], &[]);
    let effects = scheduler.accept(&pr_run, &plan, 2_000);
    commit(&mut store, &scheduler, &effects, 2_000);
    let pr_job = effects.publish[0].clone();

    let ids = |filter: RunFilter| -> Vec<Uuid> {
        store
            .find_runs(&filter, 10)
            .unwrap()
            .iter()
            .map(|run| run.run_id)
            .collect()
    };
    assert_eq!(ids(RunFilter::default()), [pr_run.id, push_run.id]);
    assert_eq!(
        ids(RunFilter {
            event: Some(EventKind::PullRequest),
            ..RunFilter::default()
        }),
        [pr_run.id]
    );
    assert_eq!(
        ids(RunFilter {
            pull_request: Some(12),
            state: Some("running".into()),
            repository: Some("infra".into()),
            ..RunFilter::default()
        }),
        [pr_run.id]
    );
    assert!(
        ids(RunFilter {
            repository: Some("elsewhere".into()),
            ..RunFilter::default()
        })
        .is_empty()
    );
    assert_eq!(store.repositories().unwrap(), ["infra"]);
    assert_eq!(store.run_of_job(job.job_id).unwrap(), Some(push_run.id));
    assert_eq!(store.run_of_job(Uuid::new_v4()).unwrap(), None);
    assert_eq!(
        store.job_worker(job.job_id).unwrap(),
        Some(JobWorker {
            run_id: push_run.id,
            account: job.account.clone(),
            role: ExecutorRole::Apply,
            attempt: 1,
            worker: Some("w1".into()),
        })
    );
    // A pull request's job runs on its account's plan workers, as it was routed.
    assert_eq!(
        store.job_worker(pr_job.job_id).unwrap(),
        Some(JobWorker {
            run_id: pr_run.id,
            account: pr_job.account.clone(),
            role: ExecutorRole::Plan,
            attempt: 1,
            worker: None,
        })
    );
    assert_eq!(pr_job.role, ExecutorRole::Plan);
    assert_eq!(store.job_worker(Uuid::new_v4()).unwrap(), None);
}
