//! The run database: every run and job, and the outbox of messages not yet published, in one
//! SQLite file that survives a crash.
//!
//! The service commits one transaction per batch of messages: the runs and jobs they changed,
//! and the jobs and statuses to publish (the outbox). Only then does it ack the messages, and
//! only then does it publish the outbox, deleting each row once the broker confirmed it. A
//! `kill -9` at any point leaves either the old state with the messages still in their queues,
//! or the new state with its outbox; both lead to the same result.
//!
//! `pipelines status` reads the same file, read-only, while the dispatcher writes it (WAL).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use proto_types::{
    Action, DriftUnit, EventKind, ExecutorRole, Job, JobPhase, JobSummary, Payload, ResourceCounts,
    RunDetail, RunPhase, RunSummary, UnitState,
};
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, TransactionBehavior, params};
use uuid::Uuid;

use crate::scheduler::{Lease, Run, RunJob};

/// What a repository's drift issue last said, and the drift pull request open for it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DriftReport {
    pub issue: Option<u64>,
    /// [`crate::drift::fingerprint`] of what the issue says.
    pub notified: String,
    pub pull_request: Option<u64>,
}

/// The file inside the dispatcher's state directory.
pub const DATABASE_FILE: &str = "dispatcher.sqlite3";

/// The schema this version writes: the number of steps in [`MIGRATIONS`].
const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Step `i` takes a database at schema version `i` to version `i + 1`.
const MIGRATIONS: [&str; 6] = [
    SCHEMA,
    // When a final run's report reached GitHub: a restarted reporter sends the others.
    "ALTER TABLE runs ADD COLUMN reported_ms INTEGER;",
    // The policy sets' verdict on a job's plan (JSON of `PolicyReport`).
    "ALTER TABLE jobs ADD COLUMN policy TEXT;",
    // A job's approval gate (JSON of `ApprovalGate`).
    "ALTER TABLE jobs ADD COLUMN approval TEXT;",
    // An approver's override of a job's policy denies (`who: why`), sent with the job.
    "ALTER TABLE jobs ADD COLUMN policy_override TEXT;",
    // Drift: a drift check's finding (JSON of `DriftFindings`); each unit's last finding
    // (JSON of `DriftUnit`); and what each repository's drift issue last said.
    "ALTER TABLE jobs ADD COLUMN drift TEXT;
     CREATE TABLE drift_units (
         repository TEXT NOT NULL,
         unit       TEXT NOT NULL,
         account    TEXT NOT NULL,
         state      TEXT NOT NULL,
         document   TEXT NOT NULL,
         PRIMARY KEY (repository, unit)
     );
     CREATE TABLE drift_reports (
         repository   TEXT PRIMARY KEY,
         issue_number INTEGER,
         notified     TEXT NOT NULL,
         updated_ms   INTEGER NOT NULL,
         pull_request INTEGER
     );",
];

const SCHEMA: &str = "
CREATE TABLE runs (
    run_id        TEXT PRIMARY KEY,
    seq           INTEGER NOT NULL UNIQUE,
    repository    TEXT NOT NULL,
    event         TEXT NOT NULL,
    pull_request  INTEGER,
    head_sha      TEXT NOT NULL,
    base_sha      TEXT NOT NULL,
    created_ms    INTEGER NOT NULL,
    updated_ms    INTEGER NOT NULL,
    rejected      TEXT,
    cancelled     TEXT,
    trace         TEXT,
    state         TEXT NOT NULL,
    reason        TEXT,
    final         INTEGER NOT NULL
);
CREATE INDEX runs_active ON runs (final, seq);
CREATE TABLE jobs (
    job_id        TEXT PRIMARY KEY,
    run_id        TEXT NOT NULL REFERENCES runs (run_id),
    idx           INTEGER NOT NULL,
    unit          TEXT NOT NULL,
    account       TEXT NOT NULL,
    action        TEXT NOT NULL,
    commit_sha    TEXT NOT NULL,
    source_commit TEXT,
    timeout_secs  INTEGER NOT NULL,
    requires      TEXT NOT NULL,
    attempt       INTEGER NOT NULL,
    state         TEXT NOT NULL,
    reason        TEXT,
    note          TEXT,
    not_before_ms INTEGER NOT NULL,
    lease_worker  TEXT,
    lease_until   INTEGER,
    lease_reply_to TEXT,
    cancel_requested TEXT,
    log           TEXT,
    exit_code     INTEGER,
    res_add       INTEGER,
    res_change    INTEGER,
    res_destroy   INTEGER,
    duration_ms   INTEGER,
    worker        TEXT,
    output_tail   TEXT,
    started_ms    INTEGER,
    finished_ms   INTEGER
);
CREATE UNIQUE INDEX jobs_by_run ON jobs (run_id, idx);
CREATE TABLE job_outputs (
    job_id TEXT PRIMARY KEY REFERENCES jobs (job_id),
    output TEXT NOT NULL
);
CREATE TABLE outbox (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    kind       TEXT NOT NULL,
    target     TEXT NOT NULL,
    message_id TEXT NOT NULL,
    body       BLOB NOT NULL,
    trace      TEXT,
    -- One pending status per run: a newer snapshot replaces the older one.
    dedup_key  TEXT UNIQUE
);
";

/// A job's current attempt and its worker, as [`Store::job_worker`] reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobWorker {
    pub run_id: Uuid,
    pub attempt: u32,
    /// The holder of the attempt, or the worker that reported how it ended.
    pub worker: Option<String>,
}

/// What went wrong with the run database. Every variant is fatal for the dispatcher: it exits
/// without acking, the broker redelivers, and the last committed state is intact.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file cannot be opened or created: fix the path or its permissions.
    #[error("cannot open the run database {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("run database {operation} failed: {reason}")]
    Sqlite {
        operation: &'static str,
        reason: String,
    },
    /// A value this version cannot read: written by a newer version, or edited by hand.
    #[error("the run database holds {what} {value:?}, which this version cannot read")]
    Corrupt { what: &'static str, value: String },
    #[error(
        "the run database {path} has schema version {found}; this version of pipelines knows \
         versions up to {SCHEMA_VERSION}: upgrade pipelines"
    )]
    NewerSchema { path: PathBuf, found: i64 },
    #[error("no run matches {0:?}")]
    UnknownRun(String),
    #[error("{prefix:?} matches {count} runs: give more of the run id")]
    AmbiguousRun { prefix: String, count: usize },
}

fn sqlite(operation: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |err| StoreError::Sqlite {
        operation,
        reason: err.to_string(),
    }
}

/// Where an outbox message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboxTarget {
    Jobs { account: String, role: ExecutorRole },
    Status { run_id: Uuid },
}

/// A message to publish once the transaction that produced it is committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    /// The row id; 0 before it is stored.
    pub id: i64,
    pub target: OutboxTarget,
    pub message_id: String,
    pub body: Vec<u8>,
    /// The `traceparent` the message carries: its run's trace.
    pub trace: Option<String>,
}

impl OutboxMessage {
    pub fn job(job: &Job, trace: Option<String>) -> OutboxMessage {
        OutboxMessage {
            id: 0,
            target: OutboxTarget::Jobs {
                account: job.account.clone(),
                role: job.role,
            },
            // Unique per attempt: a retry is a new message, a republish of one is not.
            message_id: format!("{}/{}", job.job_id, job.attempt),
            body: job.encode(),
            trace,
        }
    }

    pub fn status(run: &Run) -> OutboxMessage {
        OutboxMessage {
            id: 0,
            target: OutboxTarget::Status { run_id: run.run_id },
            message_id: Uuid::new_v4().to_string(),
            body: run.status().encode(),
            trace: run.trace.clone(),
        }
    }
}

pub use dispatcher_core::decide::{KnownJob, KnownRun};

/// Which runs the web page lists: every condition given must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunFilter {
    pub repository: Option<String>,
    pub event: Option<EventKind>,
    /// A run state as stored (`running`, `succeeded`, `failed`, ...).
    pub state: Option<String>,
    pub pull_request: Option<u64>,
}

/// The run database.
#[derive(Debug)]
pub struct Store {
    connection: Connection,
}

impl Store {
    /// Opens (creating if needed) the database in `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        let path = state_dir.join(DATABASE_FILE);
        let failed = |reason: String| StoreError::Open {
            path: path.clone(),
            reason,
        };
        std::fs::create_dir_all(state_dir).map_err(|err| failed(err.to_string()))?;
        let connection = Connection::open(&path).map_err(|err| failed(err.to_string()))?;
        Store::configure(connection, &path)
    }

    /// A database that lives as long as the process: embedded mode, where the runs end with
    /// the command anyway.
    pub fn in_memory() -> Result<Store, StoreError> {
        let connection = Connection::open_in_memory().map_err(sqlite("open"))?;
        Store::configure(connection, Path::new(":memory:"))
    }

    /// Opens an existing database without writing to it, for `pipelines status`.
    pub fn open_read_only(state_dir: &Path) -> Result<Store, StoreError> {
        let path = state_dir.join(DATABASE_FILE);
        if !path.is_file() {
            return Err(StoreError::Open {
                reason: "no such file: has a dispatcher with this state_dir run yet?".into(),
                path,
            });
        }
        let connection = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|err| StoreError::Open {
            path: path.clone(),
            reason: err.to_string(),
        })?;
        connection
            .busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sqlite("busy_timeout"))?;
        // Every statement is prepared once and reused (`prepare_cached`): parsing SQL on each
        // commit showed in the dispatcher's profile under load.
        connection.set_prepared_statement_cache_capacity(32);
        let found: i64 = connection
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(sqlite("read schema version"))?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema { path, found });
        }
        Ok(Store { connection })
    }

    fn configure(connection: Connection, path: &Path) -> Result<Store, StoreError> {
        // WAL: readers (`pipelines status`) never block the writer. FULL: a committed batch
        // survives power loss, not only a crash, because its messages are acked right after.
        let _mode: String = connection
            .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
            .map_err(sqlite("set journal_mode"))?;
        connection
            .execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")
            .map_err(sqlite("set pragmas"))?;
        connection
            .busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sqlite("busy_timeout"))?;
        let mut store = Store { connection };
        store.migrate(path)?;
        Ok(store)
    }

    fn migrate(&mut self, path: &Path) -> Result<(), StoreError> {
        // Up to date: no write lock taken, so a reader starting beside a busy dispatcher (the
        // reporter, `pipelines status`) does not queue behind it.
        let current: i64 = self
            .connection
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(sqlite("read schema version"))?;
        if current == SCHEMA_VERSION {
            return Ok(());
        }
        // Immediate: the version is read under the write lock, so two processes opening the
        // file at once (the dispatcher and its reporter) cannot both run a step.
        let tx = self
            .connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sqlite("begin migration"))?;
        let found: i64 = tx
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(sqlite("read schema version"))?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema {
                path: path.to_owned(),
                found,
            });
        }
        let done = usize::try_from(found).unwrap_or(0);
        for step in &MIGRATIONS[done..] {
            tx.execute_batch(step).map_err(sqlite("migrate schema"))?;
        }
        if found < SCHEMA_VERSION {
            tx.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))
                .map_err(sqlite("set schema version"))?;
        }
        tx.commit().map_err(sqlite("commit migration"))?;
        Ok(())
    }

    /// Writes the runs and jobs a batch changed and the messages it wants published, in one
    /// transaction.
    /// `outputs`: the end of what finished jobs printed, for reports.
    pub fn commit<'a>(
        &mut self,
        runs: impl IntoIterator<Item = &'a Run>,
        jobs: impl IntoIterator<Item = (&'a Run, &'a RunJob)>,
        outbox: &[OutboxMessage],
        outputs: &[(Uuid, String)],
        now: u64,
    ) -> Result<(), StoreError> {
        let tx = self.connection.transaction().map_err(sqlite("begin"))?;
        {
            let mut upsert_run = tx
                .prepare_cached(
                    "INSERT INTO runs (run_id, seq, repository, event, pull_request, head_sha,
                         base_sha, created_ms, updated_ms, rejected, cancelled, state, reason,
                         final, trace)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)
                     ON CONFLICT (run_id) DO UPDATE SET updated_ms = excluded.updated_ms,
                         cancelled = excluded.cancelled, state = excluded.state,
                         reason = excluded.reason, final = excluded.final",
                )
                .map_err(sqlite("prepare run upsert"))?;
            for run in runs {
                let state = run.state();
                upsert_run
                    .execute(params![
                        run.run_id.to_string(),
                        run.seq as i64,
                        run.repository,
                        run.event.as_str(),
                        run.pull_request.map(|n| n as i64),
                        run.head_sha,
                        run.base_sha,
                        run.created_ms as i64,
                        now as i64,
                        run.rejected,
                        run.cancelled,
                        state.as_str(),
                        state.reason(),
                        state.is_final(),
                        run.trace,
                    ])
                    .map_err(sqlite("write run"))?;
            }
            let mut upsert_job = tx
                .prepare_cached(
                    "INSERT INTO jobs (job_id, run_id, idx, unit, account, action, commit_sha,
                         source_commit, timeout_secs, requires, attempt, state, reason, note,
                         not_before_ms, lease_worker, lease_until, exit_code, res_add, res_change,
                         res_destroy, duration_ms, worker, output_tail, started_ms, finished_ms,
                         lease_reply_to, cancel_requested, log, policy, approval,
                         policy_override, drift)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15,
                         ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29,
                         ?30, ?31, ?32, ?33)
                     ON CONFLICT (job_id) DO UPDATE SET attempt = excluded.attempt,
                         state = excluded.state, reason = excluded.reason, note = excluded.note,
                         not_before_ms = excluded.not_before_ms,
                         lease_worker = excluded.lease_worker, lease_until = excluded.lease_until,
                         exit_code = excluded.exit_code, res_add = excluded.res_add,
                         res_change = excluded.res_change, res_destroy = excluded.res_destroy,
                         duration_ms = excluded.duration_ms, worker = excluded.worker,
                         output_tail = excluded.output_tail, started_ms = excluded.started_ms,
                         finished_ms = excluded.finished_ms,
                         lease_reply_to = excluded.lease_reply_to,
                         cancel_requested = excluded.cancel_requested, log = excluded.log,
                         policy = excluded.policy, approval = excluded.approval,
                         policy_override = excluded.policy_override, drift = excluded.drift",
                )
                .map_err(sqlite("prepare job upsert"))?;
            for (run, job) in jobs {
                let idx = run
                    .jobs
                    .iter()
                    .position(|j| j.job.job_id == job.job.job_id)
                    .unwrap_or_default();
                let requires: Vec<String> = job.requires.iter().map(usize::to_string).collect();
                let counts = job.resource_changes;
                upsert_job
                    .execute(params![
                        job.job.job_id.to_string(),
                        run.run_id.to_string(),
                        idx as i64,
                        job.job.unit,
                        job.job.account,
                        job.job.action.as_str(),
                        job.job.commit,
                        job.job.source_commit,
                        job.job.timeout_secs as i64,
                        requires.join(","),
                        job.job.attempt,
                        job.state.as_str(),
                        job.state.reason(),
                        job.note,
                        job.not_before_ms as i64,
                        job.lease.as_ref().map(|lease| lease.worker.as_str()),
                        job.lease.as_ref().map(|lease| lease.until_ms as i64),
                        job.exit_code,
                        counts.map(|c| c.add),
                        counts.map(|c| c.change),
                        counts.map(|c| c.destroy),
                        job.duration_ms.map(|ms| ms as i64),
                        job.worker,
                        job.output_tail,
                        job.started_ms.map(|ms| ms as i64),
                        job.finished_ms.map(|ms| ms as i64),
                        job.lease
                            .as_ref()
                            .and_then(|lease| lease.reply_to.as_deref()),
                        job.cancel_requested,
                        job.log,
                        job.policy.as_ref().map(to_json),
                        job.approval.as_ref().map(to_json),
                        job.job.policy_override,
                        job.drift.as_ref().map(to_json),
                    ])
                    .map_err(sqlite("write job"))?;
                if job.job.action == Action::DriftPlan && job.state.is_final() {
                    record_drift(&tx, run, job, now)?;
                }
            }
            let mut insert_outbox = tx
                .prepare_cached(
                    "INSERT INTO outbox (kind, target, message_id, body, dedup_key, trace)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (dedup_key) DO UPDATE SET message_id = excluded.message_id,
                         body = excluded.body, trace = excluded.trace",
                )
                .map_err(sqlite("prepare outbox insert"))?;
            for message in outbox {
                let (kind, target, dedup) = match &message.target {
                    OutboxTarget::Jobs { account, role } => {
                        ("job", format!("{account}/{role}"), None)
                    }
                    OutboxTarget::Status { run_id } => (
                        "status",
                        run_id.to_string(),
                        Some(format!("status/{run_id}")),
                    ),
                };
                insert_outbox
                    .execute(params![
                        kind,
                        target,
                        message.message_id,
                        message.body,
                        dedup,
                        message.trace
                    ])
                    .map_err(sqlite("write outbox"))?;
            }
        }
        {
            let mut upsert_output = tx
                .prepare_cached(
                    "INSERT INTO job_outputs (job_id, output) VALUES (?1, ?2)
                     ON CONFLICT (job_id) DO UPDATE SET output = excluded.output",
                )
                .map_err(sqlite("prepare output upsert"))?;
            for (job_id, output) in outputs {
                upsert_output
                    .execute(params![job_id.to_string(), output])
                    .map_err(sqlite("write output"))?;
            }
        }
        tx.commit().map_err(sqlite("commit"))
    }

    /// The kept output of each finished job of a run.
    pub fn outputs(&self, run_id: Uuid) -> Result<BTreeMap<Uuid, String>, StoreError> {
        let mut statement = self
            .connection
            .prepare_cached(
                "SELECT o.job_id, o.output FROM job_outputs o JOIN jobs j ON j.job_id = o.job_id
                 WHERE j.run_id = ?1",
            )
            .map_err(sqlite("prepare output read"))?;
        let mut rows = statement
            .query([run_id.to_string()])
            .map_err(sqlite("read outputs"))?;
        let mut outputs = BTreeMap::new();
        while let Some(row) = rows.next().map_err(sqlite("read outputs"))? {
            let job_id = parse_uuid("job id", &get::<String>(row, 0)?)?;
            outputs.insert(job_id, get(row, 1)?);
        }
        Ok(outputs)
    }

    /// The messages committed but not yet published, oldest first.
    pub fn outbox(&self, limit: usize) -> Result<Vec<OutboxMessage>, StoreError> {
        let mut statement = self
            .connection
            .prepare_cached(
                "SELECT id, kind, target, message_id, body, trace FROM outbox ORDER BY id LIMIT ?1",
            )
            .map_err(sqlite("prepare outbox read"))?;
        let rows = statement
            .query_map([limit as i64], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, Vec<u8>>(4)?,
                    row.get::<_, Option<String>>(5)?,
                ))
            })
            .map_err(sqlite("read outbox"))?;
        let mut messages = Vec::new();
        for row in rows {
            let (id, kind, target, message_id, body, trace) = row.map_err(sqlite("read outbox"))?;
            let target = match kind.as_str() {
                "job" => outbox_jobs_target(&target)?,
                "status" => OutboxTarget::Status {
                    run_id: parse_uuid("outbox run id", &target)?,
                },
                _ => {
                    return Err(StoreError::Corrupt {
                        what: "outbox kind",
                        value: kind,
                    });
                }
            };
            messages.push(OutboxMessage {
                id,
                target,
                message_id,
                body,
                trace,
            });
        }
        Ok(messages)
    }

    /// Forgets outbox messages the broker confirmed.
    pub fn delete_outbox(&mut self, ids: &[i64]) -> Result<(), StoreError> {
        let tx = self.connection.transaction().map_err(sqlite("begin"))?;
        {
            let mut delete = tx
                .prepare_cached("DELETE FROM outbox WHERE id = ?1")
                .map_err(sqlite("prepare outbox delete"))?;
            for id in ids {
                delete.execute([id]).map_err(sqlite("delete outbox"))?;
            }
        }
        tx.commit().map_err(sqlite("commit outbox delete"))
    }

    /// Every run not final yet, with its jobs, and the next arrival number.
    pub fn load_active(&self) -> Result<(Vec<Run>, u64), StoreError> {
        let next_seq: i64 = self
            .connection
            .query_row("SELECT COALESCE(MAX(seq), 0) + 1 FROM runs", [], |row| {
                row.get(0)
            })
            .map_err(sqlite("read next seq"))?;
        let mut statement = self
            .connection
            .prepare_cached(
                "SELECT run_id, seq, repository, event, pull_request, head_sha, base_sha,
                     created_ms, rejected, cancelled, trace
                 FROM runs WHERE final = 0 ORDER BY seq",
            )
            .map_err(sqlite("prepare run read"))?;
        let rows = statement
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, Option<i64>>(4)?,
                    row.get::<_, String>(5)?,
                    row.get::<_, String>(6)?,
                    row.get::<_, i64>(7)?,
                    row.get::<_, Option<String>>(8)?,
                    row.get::<_, Option<String>>(9)?,
                    row.get::<_, Option<String>>(10)?,
                ))
            })
            .map_err(sqlite("read runs"))?;
        let mut runs = Vec::new();
        for row in rows {
            let (
                id,
                seq,
                repository,
                event,
                pr,
                head_sha,
                base_sha,
                created,
                rejected,
                cancelled,
                trace,
            ) = row.map_err(sqlite("read runs"))?;
            let run_id = parse_uuid("run id", &id)?;
            let event: EventKind = event.parse().map_err(|_| StoreError::Corrupt {
                what: "event",
                value: event.clone(),
            })?;
            let jobs = self.load_jobs(run_id, &repository, ExecutorRole::for_event(event))?;
            runs.push(Run {
                seq: seq as u64,
                run_id,
                repository,
                event,
                head_sha,
                base_sha,
                pull_request: pr.map(|n| n as u64),
                created_ms: created as u64,
                rejected,
                cancelled,
                trace,
                jobs,
                open_non_destroy: 0,
            });
        }
        Ok((runs, next_seq as u64))
    }

    /// The jobs of a run; `role`: the worker pool of the run's event.
    fn load_jobs(
        &self,
        run_id: Uuid,
        repository: &str,
        role: ExecutorRole,
    ) -> Result<Vec<RunJob>, StoreError> {
        let mut statement = self
            .connection
            .prepare_cached(
                "SELECT job_id, unit, account, action, commit_sha, source_commit, timeout_secs,
                     requires, attempt, state, reason, note, not_before_ms, lease_worker,
                     lease_until, exit_code, res_add, res_change, res_destroy, duration_ms,
                     worker, output_tail, started_ms, finished_ms, lease_reply_to,
                     cancel_requested, log, policy, approval, policy_override, drift
                 FROM jobs WHERE run_id = ?1 ORDER BY idx",
            )
            .map_err(sqlite("prepare job read"))?;
        let mut rows = statement
            .query([run_id.to_string()])
            .map_err(sqlite("read jobs"))?;
        let mut jobs = Vec::new();
        while let Some(row) = rows.next().map_err(sqlite("read jobs"))? {
            jobs.push(job_from_row(row, run_id, repository, role)?);
        }
        Ok(jobs)
    }

    /// Records that a final run's report reached GitHub, so that a restart does not send it
    /// again.
    pub fn mark_reported(&mut self, run_id: Uuid, now: u64) -> Result<(), StoreError> {
        self.connection
            .execute(
                "UPDATE runs SET reported_ms = ?2 WHERE run_id = ?1 AND final = 1",
                params![run_id.to_string(), now as i64],
            )
            .map_err(sqlite("mark run reported"))?;
        Ok(())
    }

    /// Final runs that changed since `since_ms` and whose report never reached GitHub (the
    /// dispatcher stopped first, or GitHub was down), oldest first.
    pub fn unreported_runs(&self, since_ms: u64, limit: usize) -> Result<Vec<Uuid>, StoreError> {
        let mut statement = self
            .connection
            .prepare_cached(
                "SELECT run_id FROM runs WHERE final = 1 AND reported_ms IS NULL
                 AND updated_ms >= ?1 ORDER BY seq LIMIT ?2",
            )
            .map_err(sqlite("prepare unreported runs"))?;
        let rows = statement
            .query_map(params![since_ms as i64, limit as i64], |row| {
                row.get::<_, String>(0)
            })
            .map_err(sqlite("list unreported runs"))?;
        let mut runs = Vec::new();
        for row in rows {
            runs.push(parse_uuid(
                "run id",
                &row.map_err(sqlite("list unreported runs"))?,
            )?);
        }
        Ok(runs)
    }

    /// The `traceparent` a run belongs to, if it has one.
    pub fn trace(&self, run_id: Uuid) -> Result<Option<String>, StoreError> {
        self.connection
            .query_row(
                "SELECT trace FROM runs WHERE run_id = ?1",
                [run_id.to_string()],
                |row| row.get(0),
            )
            .optional()
            .map(Option::flatten)
            .map_err(sqlite("look up trace"))
    }

    /// Whether the database knows the run, final or not.
    pub fn known_run(&self, run_id: Uuid) -> Result<Option<KnownRun>, StoreError> {
        self.connection
            .query_row(
                "SELECT rejected FROM runs WHERE run_id = ?1",
                [run_id.to_string()],
                |row| {
                    Ok(KnownRun {
                        rejected: row.get(0)?,
                    })
                },
            )
            .optional()
            .map_err(sqlite("look up run"))
    }

    /// Where a run is, without its jobs: what a poller asks, cheaply, until the run ends.
    pub fn run_phase(&self, run_id: Uuid) -> Result<Option<RunPhase>, StoreError> {
        let state: Option<String> = self
            .connection
            .query_row(
                "SELECT state FROM runs WHERE run_id = ?1",
                [run_id.to_string()],
                |row| row.get(0),
            )
            .optional()
            .map_err(sqlite("look up run state"))?;
        state
            .map(|state| {
                state.parse().map_err(|_| StoreError::Corrupt {
                    what: "run state",
                    value: state,
                })
            })
            .transpose()
    }

    /// Deletes the finished runs last changed before `before_ms`, with their jobs and outputs;
    /// how many runs went. Active runs are never touched.
    pub fn prune_finished(&mut self, before_ms: u64) -> Result<usize, StoreError> {
        let before = i64::try_from(before_ms).unwrap_or(i64::MAX);
        let tx = self.connection.transaction().map_err(sqlite("begin"))?;
        let old = "SELECT run_id FROM runs WHERE final = 1 AND updated_ms < ?1";
        tx.execute(
            &format!(
                "DELETE FROM job_outputs WHERE job_id IN (SELECT job_id FROM jobs WHERE run_id IN ({old}))"
            ),
            [before],
        )
        .map_err(sqlite("prune job outputs"))?;
        tx.execute(
            &format!("DELETE FROM jobs WHERE run_id IN ({old})"),
            [before],
        )
        .map_err(sqlite("prune jobs"))?;
        let runs = tx
            .execute(
                "DELETE FROM runs WHERE final = 1 AND updated_ms < ?1",
                [before],
            )
            .map_err(sqlite("prune runs"))?;
        tx.commit().map_err(sqlite("commit prune"))?;
        Ok(runs)
    }

    /// The state of a job the database knows (`succeeded`, `cancelled`, ...).
    pub fn job_state(&self, job_id: Uuid) -> Result<Option<String>, StoreError> {
        self.connection
            .query_row(
                "SELECT state FROM jobs WHERE job_id = ?1",
                [job_id.to_string()],
                |row| row.get(0),
            )
            .optional()
            .map_err(sqlite("look up job"))
    }

    /// Every unit's last drift finding, of one repository or all, by repository and unit.
    pub fn drift_units(&self, repository: Option<&str>) -> Result<Vec<DriftUnit>, StoreError> {
        let mut statement = self
            .connection
            .prepare_cached(
                "SELECT document FROM drift_units WHERE ?1 IS NULL OR repository = ?1
                 ORDER BY repository, unit",
            )
            .map_err(sqlite("prepare drift read"))?;
        let documents = statement
            .query_map([repository], |row| row.get::<_, String>(0))
            .map_err(sqlite("read drift"))?
            .collect::<Result<Vec<String>, _>>()
            .map_err(sqlite("read drift"))?;
        documents
            .into_iter()
            .map(|document| {
                serde_json::from_str(&document).map_err(|_| StoreError::Corrupt {
                    what: "drift finding",
                    value: document,
                })
            })
            .collect()
    }

    /// When the last drift run of `repository` was created (scheduled or not), if any.
    pub fn last_drift_run_ms(&self, repository: &str) -> Result<Option<u64>, StoreError> {
        self.connection
            .query_row(
                "SELECT max(created_ms) FROM runs WHERE repository = ?1 AND event = 'drift'",
                [repository],
                |row| row.get::<_, Option<i64>>(0),
            )
            .map(|ms| ms.map(|ms| ms as u64))
            .map_err(sqlite("read the last drift run"))
    }

    /// When each repository's last drift run ended (accepted runs only), for the gauge a
    /// restarted dispatcher shows before its next drift run.
    pub fn drift_runs_ended(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let mut statement = self
            .connection
            .prepare_cached(
                "SELECT repository, max(updated_ms) FROM runs
                 WHERE event = 'drift' AND final = 1 AND rejected IS NULL
                 GROUP BY repository",
            )
            .map_err(sqlite("prepare drift run read"))?;
        let rows = statement
            .query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
            })
            .map_err(sqlite("read drift runs"))?;
        rows.map(|row| row.map(|(repository, ms)| (repository, ms as u64)))
            .collect::<Result<_, _>>()
            .map_err(sqlite("read drift runs"))
    }

    /// Whether a drift run of `repository` is still running.
    pub fn drift_running(&self, repository: &str) -> Result<bool, StoreError> {
        self.connection
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM runs
                     WHERE repository = ?1 AND event = 'drift' AND final = 0)",
                [repository],
                |row| row.get(0),
            )
            .map_err(sqlite("look for a running drift run"))
    }

    /// What the drift issue of `repository` last said.
    pub fn drift_report(&self, repository: &str) -> Result<Option<DriftReport>, StoreError> {
        self.connection
            .query_row(
                "SELECT issue_number, notified, pull_request FROM drift_reports
                 WHERE repository = ?1",
                [repository],
                |row| {
                    Ok(DriftReport {
                        issue: row.get::<_, Option<i64>>(0)?.map(|n| n as u64),
                        notified: row.get(1)?,
                        pull_request: row.get::<_, Option<i64>>(2)?.map(|n| n as u64),
                    })
                },
            )
            .optional()
            .map_err(sqlite("read the drift report"))
    }

    /// Records what the drift issue of `repository` says now.
    pub fn set_drift_report(
        &mut self,
        repository: &str,
        report: &DriftReport,
        now: u64,
    ) -> Result<(), StoreError> {
        self.connection
            .execute(
                "INSERT INTO drift_reports (repository, issue_number, notified, updated_ms,
                     pull_request)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (repository) DO UPDATE SET issue_number = excluded.issue_number,
                     notified = excluded.notified, updated_ms = excluded.updated_ms,
                     pull_request = excluded.pull_request",
                params![
                    repository,
                    report.issue.map(|n| n as i64),
                    report.notified,
                    now as i64,
                    report.pull_request.map(|n| n as i64)
                ],
            )
            .map(drop)
            .map_err(sqlite("write the drift report"))
    }

    /// The most recent runs, newest first.
    pub fn list_runs(&self, limit: usize) -> Result<Vec<RunSummary>, StoreError> {
        let mut statement = self
            .connection
            .prepare_cached(&format!("{RUN_SUMMARY_SELECT} ORDER BY seq DESC LIMIT ?1"))
            .map_err(sqlite("prepare run list"))?;
        let rows = statement
            .query_map([limit as i64], summary_columns)
            .map_err(sqlite("list runs"))?;
        let mut runs = Vec::new();
        for row in rows {
            runs.push(self.summary(row.map_err(sqlite("list runs"))?)?);
        }
        Ok(runs)
    }

    /// The most recent runs that pass `filter`, newest first (the web page's list).
    pub fn find_runs(
        &self,
        filter: &RunFilter,
        limit: usize,
    ) -> Result<Vec<RunSummary>, StoreError> {
        let mut clauses = Vec::new();
        let mut values: Vec<rusqlite::types::Value> = Vec::new();
        let mut clause = |sql: &str, value: rusqlite::types::Value| {
            values.push(value);
            clauses.push(format!("{sql} ?{}", values.len()));
        };
        if let Some(repository) = &filter.repository {
            clause("repository =", repository.clone().into());
        }
        if let Some(event) = filter.event {
            clause("event =", event.as_str().to_owned().into());
        }
        if let Some(state) = &filter.state {
            clause("state =", state.clone().into());
        }
        if let Some(number) = filter.pull_request {
            clause("pull_request =", (number as i64).into());
        }
        let conditions = if clauses.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", clauses.join(" AND "))
        };
        values.push((limit as i64).into());
        let mut statement = self
            .connection
            .prepare(&format!(
                "{RUN_SUMMARY_SELECT}{conditions} ORDER BY seq DESC LIMIT ?{}",
                values.len()
            ))
            .map_err(sqlite("prepare run search"))?;
        let rows = statement
            .query_map(rusqlite::params_from_iter(values), summary_columns)
            .map_err(sqlite("search runs"))?;
        let mut runs = Vec::new();
        for row in rows {
            runs.push(self.summary(row.map_err(sqlite("search runs"))?)?);
        }
        Ok(runs)
    }

    /// The run a job belongs to.
    pub fn run_of_job(&self, job_id: Uuid) -> Result<Option<Uuid>, StoreError> {
        let run: Option<String> = self
            .connection
            .query_row(
                "SELECT run_id FROM jobs WHERE job_id = ?1",
                [job_id.to_string()],
                |row| row.get(0),
            )
            .optional()
            .map_err(sqlite("find a job's run"))?;
        run.map(|id| parse_uuid("run id", &id)).transpose()
    }

    /// Who may write a job's log: its run, its attempt, and the worker that holds it now or
    /// reported its outcome (`None`: the job is unknown).
    pub fn job_worker(&self, job_id: Uuid) -> Result<Option<JobWorker>, StoreError> {
        let row: Option<(String, u32, Option<String>, Option<String>)> = self
            .connection
            .query_row(
                "SELECT run_id, attempt, lease_worker, log FROM jobs WHERE job_id = ?1",
                [job_id.to_string()],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
            )
            .optional()
            .map_err(sqlite("find a job's worker"))?;
        let Some((run_id, attempt, holder, log)) = row else {
            return Ok(None);
        };
        // The outcome's log names its worker: `<worker>:<absolute path>`.
        let reporter =
            log.and_then(|log| log.split_once(":/").map(|(worker, _)| worker.to_owned()));
        Ok(Some(JobWorker {
            run_id: parse_uuid("run id", &run_id)?,
            attempt,
            worker: holder.or(reporter),
        }))
    }

    /// The repositories that have runs, for the web page's filter.
    pub fn repositories(&self) -> Result<Vec<String>, StoreError> {
        let mut statement = self
            .connection
            .prepare_cached("SELECT DISTINCT repository FROM runs ORDER BY repository")
            .map_err(sqlite("prepare repository list"))?;
        let rows = statement
            .query_map([], |row| row.get(0))
            .map_err(sqlite("list repositories"))?;
        rows.collect::<Result<_, _>>()
            .map_err(sqlite("list repositories"))
    }

    /// One run and its jobs, by full id or an unambiguous prefix of it.
    pub fn run_detail(&self, id: &str, now: u64) -> Result<RunDetail, StoreError> {
        let prefix = id.trim().to_ascii_lowercase();
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
            return Err(StoreError::UnknownRun(id.to_owned()));
        }
        let mut statement = self
            .connection
            .prepare_cached(&format!(
                "{RUN_SUMMARY_SELECT} WHERE run_id LIKE ?1 || '%' ORDER BY seq DESC LIMIT 2"
            ))
            .map_err(sqlite("prepare run read"))?;
        let matches: Vec<SummaryColumns> = statement
            .query_map([&prefix], summary_columns)
            .map_err(sqlite("read run"))?
            .collect::<Result<_, _>>()
            .map_err(sqlite("read run"))?;
        let columns = match matches.len() {
            0 => return Err(StoreError::UnknownRun(id.to_owned())),
            1 => matches.into_iter().next().expect("one match"),
            count => {
                return Err(StoreError::AmbiguousRun { prefix, count });
            }
        };
        let run = self.summary(columns)?;
        let mut statement = self
            .connection
            .prepare_cached(
                "SELECT job_id, unit, account, action, state, reason, note, attempt, worker,
                     exit_code, duration_ms, started_ms, output_tail, log, res_add, res_change,
                     res_destroy, finished_ms, policy, approval, drift, requires
                 FROM jobs WHERE run_id = ?1 ORDER BY idx",
            )
            .map_err(sqlite("prepare job list"))?;
        let mut rows = statement
            .query([run.run_id.to_string()])
            .map_err(sqlite("list jobs"))?;
        let mut jobs = Vec::new();
        // Dependencies are kept as positions in the run; they become job ids below.
        let mut requires: Vec<String> = Vec::new();
        while let Some(row) = rows.next().map_err(sqlite("list jobs"))? {
            requires.push(get(row, 21)?);
            let action: String = get(row, 3)?;
            let action: Action = action.parse().map_err(|_| StoreError::Corrupt {
                what: "action",
                value: action.clone(),
            })?;
            let state: String = get(row, 4)?;
            let exit_code: Option<i32> = get(row, 9)?;
            let duration: Option<i64> = get(row, 10)?;
            let started: Option<i64> = get(row, 11)?;
            let reason = if state == "failed" {
                let output_tail: Option<String> = get(row, 12)?;
                Some(crate::status::failure_reason(
                    output_tail.as_deref().unwrap_or_default(),
                    exit_code,
                ))
            } else {
                get(row, 5)?
            };
            let duration_ms = match (state.as_str(), duration, started) {
                (_, Some(ms), _) => Some(ms as u64),
                ("running", None, Some(started)) => Some(now.saturating_sub(started as u64)),
                _ => None,
            };
            let state: JobPhase = state.parse().map_err(|_| StoreError::Corrupt {
                what: "job state",
                value: state.clone(),
            })?;
            jobs.push(JobSummary {
                job_id: parse_uuid("job id", &get::<String>(row, 0)?)?,
                unit: get(row, 1)?,
                account: get(row, 2)?,
                action,
                state,
                reason,
                note: get(row, 6)?,
                attempt: get(row, 7)?,
                worker: get(row, 8)?,
                exit_code,
                duration_ms,
                log: get(row, 13)?,
                resource_changes: resource_counts(get(row, 14)?, get(row, 15)?, get(row, 16)?),
                started_ms: started.map(|ms| ms as u64),
                finished_ms: get::<Option<i64>>(row, 17)?.map(|ms| ms as u64),
                policy: from_json("policy report", get(row, 18)?)?,
                approval: from_json("approval gate", get(row, 19)?)?,
                drift: from_json("drift findings", get(row, 20)?)?,
                requires: Vec::new(),
            });
        }
        let ids: Vec<Uuid> = jobs.iter().map(|job| job.job_id).collect();
        for (job, requires) in jobs.iter_mut().zip(&requires) {
            job.requires = parse_requires(requires)?
                .into_iter()
                .filter_map(|index| ids.get(index).copied())
                .collect();
        }
        Ok(RunDetail { run, jobs })
    }

    fn summary(&self, columns: SummaryColumns) -> Result<RunSummary, StoreError> {
        let (id, repository, event, pr, head_sha, state, reason, created, updated) = columns;
        let run_id = parse_uuid("run id", &id)?;
        let event: EventKind = event.parse().map_err(|_| StoreError::Corrupt {
            what: "event",
            value: event.clone(),
        })?;
        let mut statement = self
            .connection
            .prepare_cached("SELECT state, COUNT(*) FROM jobs WHERE run_id = ?1 GROUP BY state")
            .map_err(sqlite("prepare job counts"))?;
        let jobs: BTreeMap<String, u32> = statement
            .query_map([&id], |row| Ok((row.get(0)?, row.get(1)?)))
            .map_err(sqlite("count jobs"))?
            .collect::<Result<_, _>>()
            .map_err(sqlite("count jobs"))?;
        let state: RunPhase = state.parse().map_err(|_| StoreError::Corrupt {
            what: "run state",
            value: state.clone(),
        })?;
        Ok(RunSummary {
            run_id,
            repository,
            event,
            pull_request: pr.map(|n| n as u64),
            head_sha,
            state,
            reason,
            created_ms: created as u64,
            updated_ms: updated as u64,
            jobs,
        })
    }
}

const RUN_SUMMARY_SELECT: &str = "SELECT run_id, repository, event, pull_request, head_sha, \
     state, reason, created_ms, updated_ms FROM runs";

type SummaryColumns = (
    String,
    String,
    String,
    Option<i64>,
    String,
    String,
    Option<String>,
    i64,
    i64,
);

fn summary_columns(row: &Row<'_>) -> rusqlite::Result<SummaryColumns> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
        row.get(6)?,
        row.get(7)?,
        row.get(8)?,
    ))
}

/// A job's `requires` column: the positions, in its run, of the jobs it waits for (`1,3`).
fn parse_requires(requires: &str) -> Result<Vec<usize>, StoreError> {
    requires
        .split(',')
        .filter(|part| !part.is_empty())
        .map(|part| {
            part.parse::<usize>().map_err(|_| StoreError::Corrupt {
                what: "requires",
                value: requires.to_owned(),
            })
        })
        .collect()
}

/// An outbox row's `account/role`.
fn outbox_jobs_target(target: &str) -> Result<OutboxTarget, StoreError> {
    let corrupt = || StoreError::Corrupt {
        what: "outbox job target",
        value: target.to_owned(),
    };
    let (account, role) = target.split_once('/').ok_or_else(corrupt)?;
    Ok(OutboxTarget::Jobs {
        account: account.to_owned(),
        role: role.parse().map_err(|_| corrupt())?,
    })
}

fn job_from_row(
    row: &Row<'_>,
    run_id: Uuid,
    repository: &str,
    role: ExecutorRole,
) -> Result<RunJob, StoreError> {
    let action: String = get(row, 3)?;
    let action: Action = action.parse().map_err(|_| StoreError::Corrupt {
        what: "action",
        value: action.clone(),
    })?;
    let state: String = get(row, 9)?;
    let state =
        UnitState::from_parts(&state, get(row, 10)?).ok_or_else(|| StoreError::Corrupt {
            what: "job state",
            value: state.clone(),
        })?;
    let requires = parse_requires(&get::<String>(row, 7)?)?;
    let resource_changes = resource_counts(get(row, 16)?, get(row, 17)?, get(row, 18)?);
    let lease_worker: Option<String> = get(row, 13)?;
    let lease_until: Option<i64> = get(row, 14)?;
    let millis = |value: Option<i64>| value.map(|ms| ms as u64);
    Ok(RunJob {
        job: Job {
            job_id: parse_uuid("job id", &get::<String>(row, 0)?)?,
            run_id,
            repository: repository.to_owned(),
            account: get(row, 2)?,
            commit: get(row, 4)?,
            unit: get(row, 1)?,
            action,
            source_commit: get(row, 5)?,
            attempt: get(row, 8)?,
            timeout_secs: get::<i64>(row, 6)? as u64,
            role,
            policy_override: get(row, 29)?,
        },
        requires,
        state,
        note: get(row, 11)?,
        not_before_ms: get::<i64>(row, 12)? as u64,
        lease: match (lease_worker, lease_until) {
            (Some(worker), Some(until)) => Some(Lease {
                worker,
                until_ms: until as u64,
                reply_to: get(row, 24)?,
            }),
            _ => None,
        },
        exit_code: get(row, 15)?,
        resource_changes,
        duration_ms: millis(get(row, 19)?),
        worker: get(row, 20)?,
        output_tail: get(row, 21)?,
        started_ms: millis(get(row, 22)?),
        finished_ms: millis(get(row, 23)?),
        cancel_requested: get(row, 25)?,
        log: get(row, 26)?,
        policy: from_json("policy report", get(row, 27)?)?,
        approval: from_json("approval gate", get(row, 28)?)?,
        drift: from_json("drift findings", get(row, 30)?)?,
    })
}

/// Keeps what a final drift check found as its unit's last finding (in the batch's
/// transaction, so the finding and the job's state never disagree).
fn record_drift(
    tx: &rusqlite::Transaction<'_>,
    run: &Run,
    job: &RunJob,
    now: u64,
) -> Result<(), StoreError> {
    let previous: Option<String> = tx
        .query_row(
            "SELECT document FROM drift_units WHERE repository = ?1 AND unit = ?2",
            params![run.repository, job.job.unit],
            |row| row.get(0),
        )
        .optional()
        .map_err(sqlite("read drift"))?;
    let previous: Option<DriftUnit> = from_json("drift finding", previous)?;
    let Some(finding) = dispatcher_core::drift::observe(previous.as_ref(), run, job, now) else {
        return Ok(());
    };
    tx.execute(
        "INSERT INTO drift_units (repository, unit, account, state, document)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (repository, unit) DO UPDATE SET account = excluded.account,
             state = excluded.state, document = excluded.document",
        params![
            finding.repository,
            finding.unit,
            finding.account,
            finding.state.as_str(),
            to_json(&finding)
        ],
    )
    .map_err(sqlite("write drift"))?;
    Ok(())
}

/// A column holding a report or a gate as JSON.
fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

fn from_json<T: serde::de::DeserializeOwned>(
    what: &'static str,
    json: Option<String>,
) -> Result<Option<T>, StoreError> {
    json.map(|json| {
        serde_json::from_str(&json).map_err(|_| StoreError::Corrupt {
            what,
            value: json.clone(),
        })
    })
    .transpose()
}

fn resource_counts(
    add: Option<u32>,
    change: Option<u32>,
    destroy: Option<u32>,
) -> Option<ResourceCounts> {
    Some(ResourceCounts {
        add: add?,
        change: change?,
        destroy: destroy?,
    })
}

fn get<T: rusqlite::types::FromSql>(row: &Row<'_>, column: usize) -> Result<T, StoreError> {
    row.get(column).map_err(sqlite("read row"))
}

fn parse_uuid(what: &'static str, text: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(text).map_err(|_| StoreError::Corrupt {
        what,
        value: text.to_owned(),
    })
}

#[cfg(test)]
mod tests;

/// Runs blocking database work without stalling the runtime's other tasks: on a multi-thread
/// runtime the current worker thread first hands its other tasks to a new one
/// (`block_in_place`); a current-thread runtime (tests) has no other thread to give them to.
/// SQLITE_BUSY is waited on inside (`busy_timeout`), never returned at once.
pub(crate) fn off_runtime<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

#[cfg(test)]
mod off_runtime_tests {
    use super::off_runtime;

    #[test]
    fn blocking_store_work_leaves_the_runtime_to_other_tasks() {
        // One worker thread: were the blocking work to hold it, the task that unblocks it
        // could never run, and the wait would end in its timeout.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (unblock, blocked) = std::sync::mpsc::channel::<()>();
            let (started, has_started) = tokio::sync::oneshot::channel();
            let work = tokio::spawn(async move {
                let _ = started.send(());
                // No await from here on: the worker thread goes straight into the wait.
                off_runtime(|| blocked.recv_timeout(std::time::Duration::from_secs(30)))
            });
            has_started.await.unwrap();
            tokio::spawn(async move { unblock.send(()).unwrap() });
            assert_eq!(work.await.unwrap(), Ok(()));
        });
    }
}
