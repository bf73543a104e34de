//! The run database: every run and job, and the outbox of messages not yet published, in a
//! SQLite file that survives a crash or in a PostgreSQL database that several dispatchers share.
//!
//! The service commits one transaction per batch of messages: the runs and jobs they changed,
//! and the jobs and statuses to publish (the outbox). Only then does it ack the messages, and
//! only then does it publish the outbox, deleting each row once the broker confirmed it. A
//! `kill -9` at any point leaves either the old state with the messages still in their queues,
//! or the new state with its outbox; both lead to the same result.
//!
//! `pipelines status` reads the same database, read-only, while the dispatcher writes it (WAL
//! for SQLite). Both engines run the same statements ([`sql`]); only their schemas' spelling
//! differs.

mod postgres;
pub(crate) mod sql;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use proto_types::{
    Action, DriftUnit, EventKind, ExecutorRole, Job, JobPhase, JobSummary, Payload, ResourceCounts,
    RunDetail, RunPhase, RunState, RunSummary, UnitState,
};
use rusqlite::{Connection, OpenFlags};
use uuid::Uuid;

use postgres::PgConnection;
use sql::{Db, FromValue, Row, ToValue, Value, failed, values};

use crate::scheduler::{JobAt, Lease, Run, RunJob};

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
const MIGRATIONS: [&str; 7] = [
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
    RUNS_BY_COMMIT,
];

/// The runs of a commit, and the newest run of a pull request: what the plan status of a
/// commit that several pull requests share is made of. (`IF NOT EXISTS`: a test takes a
/// database back to version 1 by dropping what later steps added, indexes aside.) Rejected
/// runs stored before their identity was cut to 200 characters are cut first: PostgreSQL
/// refuses an index entry of more than about 2.7 kB.
const RUNS_BY_COMMIT: &str = "
UPDATE runs SET repository = substr(repository, 1, 200), head_sha = substr(head_sha, 1, 200),
    base_sha = substr(base_sha, 1, 200)
    WHERE length(repository) > 200 OR length(head_sha) > 200 OR length(base_sha) > 200;
CREATE INDEX IF NOT EXISTS runs_by_commit ON runs (repository, head_sha);
CREATE INDEX IF NOT EXISTS runs_by_pull_request ON runs (repository, pull_request, seq);
";

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

/// The same schema for PostgreSQL, step for step: the first step creates what SQLite's six
/// did (PostgreSQL came with version 6), so the versions of both engines mean the same.
const POSTGRES_MIGRATIONS: [&str; 7] = [POSTGRES_SCHEMA, "", "", "", "", "", RUNS_BY_COMMIT];

/// The key of the advisory lock under which a PostgreSQL database is migrated.
const MIGRATION_LOCK: i64 = 0x7069_7065_6c69_6e65; // "pipeline"

const POSTGRES_SCHEMA: &str = "
CREATE TABLE runs (
    run_id        TEXT PRIMARY KEY,
    seq           BIGINT NOT NULL UNIQUE,
    repository    TEXT NOT NULL,
    event         TEXT NOT NULL,
    pull_request  BIGINT,
    head_sha      TEXT NOT NULL,
    base_sha      TEXT NOT NULL,
    created_ms    BIGINT NOT NULL,
    updated_ms    BIGINT NOT NULL,
    rejected      TEXT,
    cancelled     TEXT,
    trace         TEXT,
    state         TEXT NOT NULL,
    reason        TEXT,
    final         BIGINT NOT NULL,
    reported_ms   BIGINT
);
CREATE INDEX runs_active ON runs (final, seq);
CREATE TABLE jobs (
    job_id        TEXT PRIMARY KEY,
    run_id        TEXT NOT NULL REFERENCES runs (run_id),
    idx           BIGINT NOT NULL,
    unit          TEXT NOT NULL,
    account       TEXT NOT NULL,
    action        TEXT NOT NULL,
    commit_sha    TEXT NOT NULL,
    source_commit TEXT,
    timeout_secs  BIGINT NOT NULL,
    requires      TEXT NOT NULL,
    attempt       BIGINT NOT NULL,
    state         TEXT NOT NULL,
    reason        TEXT,
    note          TEXT,
    not_before_ms BIGINT NOT NULL,
    lease_worker  TEXT,
    lease_until   BIGINT,
    lease_reply_to TEXT,
    cancel_requested TEXT,
    log           TEXT,
    exit_code     BIGINT,
    res_add       BIGINT,
    res_change    BIGINT,
    res_destroy   BIGINT,
    duration_ms   BIGINT,
    worker        TEXT,
    output_tail   TEXT,
    started_ms    BIGINT,
    finished_ms   BIGINT,
    policy        TEXT,
    approval      TEXT,
    policy_override TEXT,
    drift         TEXT
);
CREATE UNIQUE INDEX jobs_by_run ON jobs (run_id, idx);
CREATE TABLE job_outputs (
    job_id TEXT PRIMARY KEY REFERENCES jobs (job_id),
    output TEXT NOT NULL
);
CREATE TABLE outbox (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind       TEXT NOT NULL,
    target     TEXT NOT NULL,
    message_id TEXT NOT NULL,
    body       BYTEA NOT NULL,
    trace      TEXT,
    dedup_key  TEXT UNIQUE
);
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
    issue_number BIGINT,
    notified     TEXT NOT NULL,
    updated_ms   BIGINT NOT NULL,
    pull_request BIGINT
);
-- The one leader of the dispatchers sharing this database: its lease, and the term every
-- takeover raises (the fencing token its writes are checked against).
CREATE TABLE dispatcher_leader (
    id         BIGINT PRIMARY KEY CHECK (id = 1),
    holder     TEXT NOT NULL,
    term       BIGINT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
INSERT INTO dispatcher_leader (id, holder, term, expires_at) VALUES (1, '', 0, '-infinity');
";

/// A job's current attempt and its worker, as [`Store::job_worker`] reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobWorker {
    pub run_id: Uuid,
    /// The account and worker pool whose executors run the job.
    pub account: String,
    pub role: ExecutorRole,
    pub attempt: u32,
    /// The holder of the attempt, or the worker that reported how it ended.
    pub worker: Option<String>,
}

/// What went wrong with the run database. Every variant is fatal for the dispatcher's loop: it
/// stops without acking, the broker redelivers, and the last committed state is intact.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file cannot be opened or created (fix the path or its permissions), or the server
    /// cannot be reached (`path` is then its URL without the password).
    #[error("cannot open the run database {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("run database {operation} failed: {reason}")]
    Database {
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
    /// The PostgreSQL server cannot be reached or dropped the connection (a restart, a
    /// failover): connect again and start from what is committed.
    #[error("the run database at {url} is unavailable ({operation}): {reason}")]
    Unavailable {
        url: String,
        operation: &'static str,
        reason: String,
    },
    /// Another dispatcher took the lead: this one's writes are refused, and it steps down.
    #[error(
        "another dispatcher leads now ({holder}, term {term}); this one (term {ours}) is fenced \
         off and steps down"
    )]
    Fenced {
        holder: String,
        term: i64,
        ours: i64,
    },
    /// This dispatcher's lease ran out by its own clock, and renewing it found another
    /// dispatcher leading: it answers nothing more and steps down.
    #[error(
        "the lease of term {term} ran out by this dispatcher's clock, and another dispatcher \
         took the lead meanwhile: this one answers nothing more and steps down"
    )]
    LeaseLapsed { term: i64 },
    /// A copy goes only into a database without runs.
    #[error("the target database already holds {runs} runs: copy into an empty one")]
    NotEmpty { runs: i64 },
    /// Leadership needs a database that dispatchers share.
    #[error("only a PostgreSQL run database has a leader")]
    NotShared,
}

impl StoreError {
    /// Whether connecting again may help: PostgreSQL went away. Everything else stops the
    /// dispatcher (a SQLite file that fails will fail again; a fenced leader must not retry).
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }
}

/// How long PostgreSQL keeps a leader's session that opened a transaction and then went
/// silent. A leader's write transaction sends its statements back to back, so only a process
/// that stalled (SIGSTOP, a paused container) or lost the network mid-transaction is this
/// quiet. That transaction holds the leader row `FOR SHARE`, on which a standby's takeover
/// waits: without this bound it would wait as long as the stall, or for TCP's keepalive
/// (hours). Ended, the session's transaction is rolled back and its locks released; the
/// stalled process finds its connection gone. Only the leader's fenced connection has it:
/// `pipelines store migrate` keeps its target's transaction open while it reads each table.
pub const IDLE_IN_TRANSACTION: std::time::Duration = std::time::Duration::from_secs(5);

/// Who leads the dispatchers sharing a PostgreSQL database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    pub holder: String,
    /// Raised by every takeover: the fencing token a leader's writes carry.
    pub term: i64,
    /// Whether the lease is still running (by the database's clock).
    pub current: bool,
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

/// Where the run database lives: `[dispatcher] store`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// A SQLite file on the dispatcher's disk (the default, and embedded mode's).
    Sqlite(PathBuf),
    /// A PostgreSQL database that several dispatchers share (one of them leads).
    Postgres(String),
}

impl StoreLocation {
    /// `postgres://…` or `postgresql://…`: PostgreSQL; `sqlite://PATH`: a SQLite database at
    /// PATH, or in the directory PATH (the dispatcher's `state_dir`).
    pub fn parse(text: &str) -> Result<StoreLocation, String> {
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            return Ok(StoreLocation::Postgres(text.to_owned()));
        }
        let Some(path) = text.strip_prefix("sqlite://") else {
            return Err(format!(
                "{text:?} is neither postgres://… nor sqlite://PATH"
            ));
        };
        if path.is_empty() {
            return Err("sqlite:// needs a path".into());
        }
        Ok(StoreLocation::in_state_dir_or_file(Path::new(path)))
    }

    /// The run database `config` names: `[dispatcher] store` with its password file, else
    /// SQLite in `[dispatcher] state_dir`.
    pub fn of(config: &config::Config) -> Result<StoreLocation, config::ConfigError> {
        let Some(url) = config.dispatcher.store_url()? else {
            return Ok(StoreLocation::state_dir(&config.dispatcher.state_dir()));
        };
        StoreLocation::parse(&url).map_err(|message| config::ConfigError::Invalid {
            key: "dispatcher.store".into(),
            message,
        })
    }

    /// The dispatcher's SQLite database in `state_dir`.
    pub fn state_dir(state_dir: &Path) -> StoreLocation {
        StoreLocation::Sqlite(state_dir.join(DATABASE_FILE))
    }

    fn in_state_dir_or_file(path: &Path) -> StoreLocation {
        if path.is_dir() || path.extension().is_none() {
            StoreLocation::state_dir(path)
        } else {
            StoreLocation::Sqlite(path.to_owned())
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, StoreLocation::Postgres(_))
    }
}

impl std::fmt::Display for StoreLocation {
    /// Never shows a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreLocation::Sqlite(path) => write!(f, "sqlite://{}", path.display()),
            StoreLocation::Postgres(url) => f.write_str(&postgres::shown_url(url)),
        }
    }
}

/// The run database.
#[derive(Debug)]
pub struct Store {
    db: Db,
    /// The term this connection writes for: every write transaction first checks that it is
    /// still the leader's (PostgreSQL with several dispatchers; `None`: no check).
    fence: Option<i64>,
}

impl Store {
    /// Opens (creating if needed) the SQLite database in `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        Store::open_sqlite(&state_dir.join(DATABASE_FILE))
    }

    /// Opens the database at `location`, creating its tables or bringing them to this
    /// version's schema.
    pub fn connect(location: &StoreLocation) -> Result<Store, StoreError> {
        match location {
            StoreLocation::Sqlite(path) => Store::open_sqlite(path),
            StoreLocation::Postgres(url) => {
                let store = Store {
                    db: Db::Postgres(PgConnection::connect(url)?),
                    fence: None,
                };
                store.migrate_postgres(location)?;
                Ok(store)
            }
        }
    }

    /// Opens the database at `location` to read it only: the web page, `pipelines status`.
    pub fn connect_read_only(location: &StoreLocation) -> Result<Store, StoreError> {
        match location {
            StoreLocation::Sqlite(path) => Store::open_sqlite_read_only(path),
            StoreLocation::Postgres(url) => {
                let store = Store {
                    db: Db::Postgres(PgConnection::connect(url)?),
                    fence: None,
                };
                store
                    .db
                    .batch("set read only", "SET default_transaction_read_only = on")?;
                let found = store.postgres_version()?;
                if found > SCHEMA_VERSION {
                    return Err(StoreError::NewerSchema {
                        path: location.to_string().into(),
                        found,
                    });
                }
                Ok(store)
            }
        }
    }

    fn open_sqlite(path: &Path) -> Result<Store, StoreError> {
        let failed = |reason: String| StoreError::Open {
            path: path.to_owned(),
            reason,
        };
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|err| failed(err.to_string()))?;
        }
        let connection = Connection::open(path).map_err(|err| failed(err.to_string()))?;
        Store::configure(connection, path)
    }

    /// A database that lives as long as the process: embedded mode, where the runs end with
    /// the command anyway.
    pub fn in_memory() -> Result<Store, StoreError> {
        let connection = Connection::open_in_memory().map_err(failed("open"))?;
        Store::configure(connection, Path::new(":memory:"))
    }

    /// Opens an existing SQLite database in `state_dir` without writing to it.
    pub fn open_read_only(state_dir: &Path) -> Result<Store, StoreError> {
        Store::open_sqlite_read_only(&state_dir.join(DATABASE_FILE))
    }

    fn open_sqlite_read_only(path: &Path) -> Result<Store, StoreError> {
        if !path.is_file() {
            return Err(StoreError::Open {
                reason: "no such file: has a dispatcher with this state_dir run yet?".into(),
                path: path.to_owned(),
            });
        }
        let connection = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|err| StoreError::Open {
            path: path.to_owned(),
            reason: err.to_string(),
        })?;
        connection
            .busy_timeout(std::time::Duration::from_secs(5))
            .map_err(failed("busy_timeout"))?;
        // Every statement is prepared once and reused (`prepare_cached`): parsing SQL on each
        // commit showed in the dispatcher's profile under load.
        connection.set_prepared_statement_cache_capacity(32);
        let found: i64 = connection
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(failed("read schema version"))?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema {
                path: path.to_owned(),
                found,
            });
        }
        Ok(Store {
            db: Db::Sqlite(connection),
            fence: None,
        })
    }

    fn configure(connection: Connection, path: &Path) -> Result<Store, StoreError> {
        // WAL: readers (`pipelines status`) never block the writer. FULL: a committed batch
        // survives power loss, not only a crash, because its messages are acked right after.
        let _mode: String = connection
            .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
            .map_err(failed("set journal_mode"))?;
        connection
            .execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")
            .map_err(failed("set pragmas"))?;
        connection
            .busy_timeout(std::time::Duration::from_secs(5))
            .map_err(failed("busy_timeout"))?;
        connection.set_prepared_statement_cache_capacity(32);
        let store = Store {
            db: Db::Sqlite(connection),
            fence: None,
        };
        store.migrate_sqlite(path)?;
        Ok(store)
    }

    fn sqlite_version(&self) -> Result<i64, StoreError> {
        let row = self
            .db
            .query_row("read schema version", "PRAGMA user_version", &[])?;
        row.map_or(Ok(0), |row| row.get(0))
    }

    fn migrate_sqlite(&self, path: &Path) -> Result<(), StoreError> {
        // Up to date: no write lock taken, so a reader starting beside a busy dispatcher (the
        // reporter, `pipelines status`) does not queue behind it.
        if self.sqlite_version()? == SCHEMA_VERSION {
            return Ok(());
        }
        // Immediate: the version is read under the write lock, so two processes opening the
        // file at once (the dispatcher and its reporter) cannot both run a step.
        self.db.transaction(true, |db| {
            let found = self.sqlite_version()?;
            if found > SCHEMA_VERSION {
                return Err(StoreError::NewerSchema {
                    path: path.to_owned(),
                    found,
                });
            }
            let done = usize::try_from(found).unwrap_or(0);
            for step in &MIGRATIONS[done..] {
                db.batch("migrate schema", step)?;
            }
            if found < SCHEMA_VERSION {
                db.batch(
                    "set schema version",
                    &format!("PRAGMA user_version = {SCHEMA_VERSION}"),
                )?;
            }
            Ok(())
        })
    }

    /// The schema version of a PostgreSQL database; 0 before the first migration.
    fn postgres_version(&self) -> Result<i64, StoreError> {
        let exists = self
            .db
            .query_row(
                "look for the schema table",
                "SELECT to_regclass('pipelines_schema') IS NOT NULL",
                &[],
            )?
            .map_or(Ok(false), |row| row.get::<bool>(0))?;
        if !exists {
            return Ok(0);
        }
        self.db
            .query_row(
                "read schema version",
                "SELECT version FROM pipelines_schema",
                &[],
            )?
            .map_or(Ok(0), |row| row.get(0))
    }

    /// Brings a PostgreSQL database to this version's schema. Dispatchers starting together
    /// wait for each other on an advisory lock held for the transaction, so each step runs
    /// once; PostgreSQL's DDL is transactional, so a step that fails leaves the previous
    /// version whole.
    fn migrate_postgres(&self, location: &StoreLocation) -> Result<(), StoreError> {
        self.db.transaction(true, |db| {
            db.execute(
                "lock the schema",
                "SELECT pg_advisory_xact_lock(?1)",
                values![MIGRATION_LOCK],
            )?;
            let found = self.postgres_version()?;
            if found > SCHEMA_VERSION {
                return Err(StoreError::NewerSchema {
                    path: location.to_string().into(),
                    found,
                });
            }
            if found == SCHEMA_VERSION {
                return Ok(());
            }
            if found == 0 {
                db.batch(
                    "create the schema table",
                    "CREATE TABLE pipelines_schema (version BIGINT NOT NULL);
                     INSERT INTO pipelines_schema (version) VALUES (0);",
                )?;
            }
            let done = usize::try_from(found).unwrap_or(0);
            for step in &POSTGRES_MIGRATIONS[done..] {
                if !step.is_empty() {
                    db.batch("migrate schema", step)?;
                }
            }
            db.execute(
                "set schema version",
                "UPDATE pipelines_schema SET version = ?1",
                values![SCHEMA_VERSION],
            )?;
            Ok(())
        })
    }

    /// Makes every later write of this connection conditional on `term` still being the
    /// leader's: a deposed leader's writes are refused ([`StoreError::Fenced`]). The server
    /// also ends the connection's session when a transaction of it stays quiet for
    /// [`IDLE_IN_TRANSACTION`] (see there).
    pub fn fenced_by(mut self, term: i64) -> Result<Store, StoreError> {
        if self.db.is_postgres() {
            self.db.batch(
                "bound idle transactions",
                &format!(
                    "SET idle_in_transaction_session_timeout = {}",
                    IDLE_IN_TRANSACTION.as_millis()
                ),
            )?;
        }
        self.fence = Some(term);
        Ok(self)
    }

    /// One write transaction, after the fencing check. The check reads the leader row `FOR
    /// SHARE`: a takeover (which updates that row) waits for this transaction, or this
    /// transaction waits for the takeover and then sees the new term. Either way no write of
    /// an old term lands after a new leader took over.
    fn write<T>(&self, work: impl FnOnce(&Db) -> Result<T, StoreError>) -> Result<T, StoreError> {
        self.db.transaction(false, |db| {
            if let Some(ours) = self.fence {
                let leader = db
                    .query_row(
                        "check the leadership",
                        "SELECT holder, term FROM dispatcher_leader WHERE id = 1 FOR SHARE",
                        &[],
                    )?
                    .ok_or(StoreError::NotShared)?;
                let term: i64 = leader.get(1)?;
                if term != ours {
                    return Err(StoreError::Fenced {
                        holder: leader.get(0)?,
                        term,
                        ours,
                    });
                }
            }
            work(db)
        })
    }

    /// Takes the lead for `lease_ms` if nobody holds it (the last lease ran out, or was
    /// given up); the new term, or `None` while another dispatcher leads. Time is the
    /// database's, so the dispatchers' clocks need not agree.
    pub fn try_lead(&self, holder: &str, lease_ms: u64) -> Result<Option<i64>, StoreError> {
        self.shared()?;
        self.lookup(
            "take the lead",
            "UPDATE dispatcher_leader SET holder = ?1, term = term + 1,
                 expires_at = clock_timestamp() + ?2::BIGINT * interval '1 millisecond'
             WHERE id = 1 AND expires_at < clock_timestamp()
             RETURNING term",
            values![holder, lease_ms as i64],
        )
    }

    /// Extends the lead of `term` by `lease_ms`; `false`: another dispatcher took over.
    pub fn renew_lead(&self, holder: &str, term: i64, lease_ms: u64) -> Result<bool, StoreError> {
        self.shared()?;
        let renewed = self.db.execute(
            "renew the lead",
            "UPDATE dispatcher_leader
             SET expires_at = clock_timestamp() + ?3::BIGINT * interval '1 millisecond'
             WHERE id = 1 AND holder = ?1 AND term = ?2",
            values![holder, term, lease_ms as i64],
        )?;
        Ok(renewed == 1)
    }

    /// Gives the lead up at once (a clean shutdown), so a standby need not wait for the lease
    /// to run out.
    pub fn resign(&self, holder: &str, term: i64) -> Result<(), StoreError> {
        self.shared()?;
        self.db.execute(
            "give up the lead",
            "UPDATE dispatcher_leader SET expires_at = clock_timestamp() - interval '1 second'
             WHERE id = 1 AND holder = ?1 AND term = ?2",
            values![holder, term],
        )?;
        Ok(())
    }

    /// Who leads, by the database.
    pub fn leader(&self) -> Result<Option<Leader>, StoreError> {
        self.shared()?;
        self.db
            .query_row(
                "read the leader",
                "SELECT holder, term, expires_at > clock_timestamp() FROM dispatcher_leader
                 WHERE id = 1 AND holder <> ''",
                &[],
            )?
            .map(|row| {
                Ok(Leader {
                    holder: row.get(0)?,
                    term: row.get(1)?,
                    current: row.get(2)?,
                })
            })
            .transpose()
    }

    fn shared(&self) -> Result<(), StoreError> {
        if self.db.is_postgres() {
            Ok(())
        } else {
            Err(StoreError::NotShared)
        }
    }

    /// Writes the runs (each with its state after the batch) and jobs a batch changed and the
    /// messages it wants published, in one transaction.
    /// `outputs`: the end of what finished jobs printed, for reports.
    pub fn commit<'a>(
        &mut self,
        runs: impl IntoIterator<Item = (&'a Run, &'a RunState)>,
        jobs: impl IntoIterator<Item = JobAt<'a>>,
        outbox: &[OutboxMessage],
        outputs: &[(Uuid, String)],
        now: u64,
    ) -> Result<(), StoreError> {
        self.write(|db| {
            for (run, state) in runs {
                db.execute(
                    "write run",
                    "INSERT INTO runs (run_id, seq, repository, event, pull_request, head_sha,
                         base_sha, created_ms, updated_ms, rejected, cancelled, state, reason,
                         final, trace)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)
                     ON CONFLICT (run_id) DO UPDATE SET updated_ms = excluded.updated_ms,
                         cancelled = excluded.cancelled, state = excluded.state,
                         reason = excluded.reason, final = excluded.final",
                    values![
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
                    ],
                )?;
            }
            for JobAt {
                run,
                index: idx,
                job,
            } in jobs
            {
                let requires: Vec<String> = job.requires.iter().map(usize::to_string).collect();
                let counts = job.resource_changes;
                db.execute(
                    "write job",
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
                    values![
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
                    ],
                )?;
                if job.job.action == Action::DriftPlan && job.state.is_final() {
                    record_drift(db, run, job, now)?;
                }
            }
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
                db.execute(
                    "write outbox",
                    "INSERT INTO outbox (kind, target, message_id, body, dedup_key, trace)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (dedup_key) DO UPDATE SET message_id = excluded.message_id,
                         body = excluded.body, trace = excluded.trace",
                    values![
                        kind,
                        target,
                        message.message_id,
                        message.body,
                        dedup,
                        message.trace
                    ],
                )?;
            }
            for (job_id, output) in outputs {
                db.execute(
                    "write output",
                    "INSERT INTO job_outputs (job_id, output) VALUES (?1, ?2)
                     ON CONFLICT (job_id) DO UPDATE SET output = excluded.output",
                    values![job_id.to_string(), output],
                )?;
            }
            Ok(())
        })
    }

    /// The kept output of each finished job of a run.
    pub fn outputs(&self, run_id: Uuid) -> Result<BTreeMap<Uuid, String>, StoreError> {
        let rows = self.db.query(
            "read outputs",
            "SELECT o.job_id, o.output FROM job_outputs o JOIN jobs j ON j.job_id = o.job_id
             WHERE j.run_id = ?1",
            values![run_id.to_string()],
        )?;
        let mut outputs = BTreeMap::new();
        for row in rows {
            let job_id = parse_uuid("job id", &row.get::<String>(0)?)?;
            outputs.insert(job_id, row.get(1)?);
        }
        Ok(outputs)
    }

    /// The messages committed but not yet published, oldest first.
    pub fn outbox(&self, limit: usize) -> Result<Vec<OutboxMessage>, StoreError> {
        // The limit is written into the statement, not bound: SQLite (the bundled 3.50) plans
        // a bound LIMIT by its value and so prepares the statement again after every binding,
        // which here was after every batch.
        let rows = self.db.query(
            "read outbox",
            &format!(
                "SELECT id, kind, target, message_id, body, trace FROM outbox ORDER BY id LIMIT {limit}"
            ),
            &[],
        )?;
        let mut messages = Vec::new();
        for row in rows {
            let kind: String = row.get(1)?;
            let target: String = row.get(2)?;
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
                id: row.get(0)?,
                target,
                message_id: row.get(3)?,
                body: row.get(4)?,
                trace: row.get(5)?,
            });
        }
        Ok(messages)
    }

    /// Forgets outbox messages the broker confirmed.
    pub fn delete_outbox(&mut self, ids: &[i64]) -> Result<(), StoreError> {
        self.write(|db| {
            for id in ids {
                db.execute(
                    "delete outbox",
                    "DELETE FROM outbox WHERE id = ?1",
                    values![*id],
                )?;
            }
            Ok(())
        })
    }

    /// Every run not final yet, with its jobs, and the next arrival number.
    pub fn load_active(&self) -> Result<(Vec<Run>, u64), StoreError> {
        let next_seq: i64 = self
            .db
            .query_row(
                "read next seq",
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM runs",
                &[],
            )?
            .map_or(Ok(1), |row| row.get(0))?;
        let rows = self.db.query(
            "read runs",
            "SELECT run_id, seq, repository, event, pull_request, head_sha, base_sha,
                 created_ms, rejected, cancelled, trace
             FROM runs WHERE final = 0 ORDER BY seq",
            &[],
        )?;
        let mut runs = Vec::new();
        for row in rows {
            let run_id = parse_uuid("run id", &row.get::<String>(0)?)?;
            let repository: String = row.get(2)?;
            let event: String = row.get(3)?;
            let event: EventKind = event.parse().map_err(|_| StoreError::Corrupt {
                what: "event",
                value: event.clone(),
            })?;
            let jobs = self.load_jobs(run_id, &repository, ExecutorRole::for_event(event))?;
            runs.push(Run {
                seq: row.get::<i64>(1)? as u64,
                run_id,
                repository,
                event,
                head_sha: row.get(5)?,
                base_sha: row.get(6)?,
                pull_request: row.get::<Option<i64>>(4)?.map(|n| n as u64),
                created_ms: row.get::<i64>(7)? as u64,
                rejected: row.get(8)?,
                cancelled: row.get(9)?,
                trace: row.get(10)?,
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
        let rows = self.db.query(
            "read jobs",
            "SELECT job_id, unit, account, action, commit_sha, source_commit, timeout_secs,
                 requires, attempt, state, reason, note, not_before_ms, lease_worker,
                 lease_until, exit_code, res_add, res_change, res_destroy, duration_ms,
                 worker, output_tail, started_ms, finished_ms, lease_reply_to,
                 cancel_requested, log, policy, approval, policy_override, drift
             FROM jobs WHERE run_id = ?1 ORDER BY idx",
            values![run_id.to_string()],
        )?;
        rows.iter()
            .map(|row| job_from_row(row, run_id, repository, role))
            .collect()
    }

    /// Records that a final run's report reached GitHub, so that a restart does not send it
    /// again.
    pub fn mark_reported(&mut self, run_id: Uuid, now: u64) -> Result<(), StoreError> {
        self.db.execute(
            "mark run reported",
            "UPDATE runs SET reported_ms = ?2 WHERE run_id = ?1 AND final = 1",
            values![run_id.to_string(), now as i64],
        )?;
        Ok(())
    }

    /// Final runs that changed since `since_ms` and whose report never reached GitHub (the
    /// dispatcher stopped first, or GitHub was down), oldest first.
    pub fn unreported_runs(&self, since_ms: u64, limit: usize) -> Result<Vec<Uuid>, StoreError> {
        self.db
            .query(
                "list unreported runs",
                "SELECT run_id FROM runs WHERE final = 1 AND reported_ms IS NULL
                 AND updated_ms >= ?1 ORDER BY seq LIMIT ?2",
                values![since_ms as i64, limit as i64],
            )?
            .iter()
            .map(|row| parse_uuid("run id", &row.get::<String>(0)?))
            .collect()
    }

    /// The first column of the one row `sql` finds by `key`, if any.
    fn lookup<T: FromValue>(
        &self,
        operation: &'static str,
        sql: &str,
        key: &[Value],
    ) -> Result<Option<T>, StoreError> {
        self.db
            .query_row(operation, sql, key)?
            .map(|row| row.get(0))
            .transpose()
    }

    /// The newest run of each pull request of `repository` whose head is now `head_sha`: the
    /// runs whose plans share that commit's status, oldest first. A pull request whose newest
    /// run is on another commit has moved on, and does not count.
    pub fn pull_request_runs_on(
        &self,
        repository: &str,
        head_sha: &str,
    ) -> Result<Vec<Uuid>, StoreError> {
        self.db
            .query(
                "find the pull requests of a commit",
                "SELECT run_id FROM runs WHERE repository = ?1 AND head_sha = ?2
                 AND pull_request IS NOT NULL AND NOT EXISTS (
                     SELECT 1 FROM runs AS newer WHERE newer.repository = runs.repository
                     AND newer.pull_request = runs.pull_request AND newer.seq > runs.seq)
                 ORDER BY seq",
                values![repository, head_sha],
            )?
            .iter()
            .map(|row| parse_uuid("run id", &row.get::<String>(0)?))
            .collect()
    }

    /// The head of the run of pull request `number` before `run_id`, if it had one.
    pub fn previous_head(
        &self,
        repository: &str,
        number: u64,
        run_id: Uuid,
    ) -> Result<Option<String>, StoreError> {
        self.lookup(
            "find a pull request's previous head",
            "SELECT head_sha FROM runs WHERE repository = ?1 AND pull_request = ?2
             AND seq < (SELECT seq FROM runs WHERE run_id = ?3) ORDER BY seq DESC LIMIT 1",
            values![repository, number as i64, run_id.to_string()],
        )
    }

    /// The `traceparent` a run belongs to, if it has one.
    pub fn trace(&self, run_id: Uuid) -> Result<Option<String>, StoreError> {
        self.lookup::<Option<String>>(
            "look up trace",
            "SELECT trace FROM runs WHERE run_id = ?1",
            values![run_id.to_string()],
        )
        .map(Option::flatten)
    }

    /// Whether the database knows the run, final or not.
    pub fn known_run(&self, run_id: Uuid) -> Result<Option<KnownRun>, StoreError> {
        Ok(self
            .lookup(
                "look up run",
                "SELECT rejected FROM runs WHERE run_id = ?1",
                values![run_id.to_string()],
            )?
            .map(|rejected| KnownRun { rejected }))
    }

    /// Where a run is, without its jobs: what a poller asks, cheaply, until the run ends.
    pub fn run_phase(&self, run_id: Uuid) -> Result<Option<RunPhase>, StoreError> {
        let state: Option<String> = self.lookup(
            "look up run state",
            "SELECT state FROM runs WHERE run_id = ?1",
            values![run_id.to_string()],
        )?;
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
        self.write(|db| {
            let old = "SELECT run_id FROM runs WHERE final = 1 AND updated_ms < ?1";
            db.execute(
                "prune job outputs",
                &format!(
                    "DELETE FROM job_outputs WHERE job_id IN (SELECT job_id FROM jobs WHERE run_id IN ({old}))"
                ),
                values![before],
            )?;
            db.execute(
                "prune jobs",
                &format!("DELETE FROM jobs WHERE run_id IN ({old})"),
                values![before],
            )?;
            let runs = db.execute(
                "prune runs",
                "DELETE FROM runs WHERE final = 1 AND updated_ms < ?1",
                values![before],
            )?;
            Ok(runs as usize)
        })
    }

    /// The state of a job the database knows (`succeeded`, `cancelled`, ...).
    pub fn job_state(&self, job_id: Uuid) -> Result<Option<String>, StoreError> {
        self.lookup(
            "look up job",
            "SELECT state FROM jobs WHERE job_id = ?1",
            values![job_id.to_string()],
        )
    }

    /// Every unit's last drift finding, of one repository or all, by repository and unit.
    pub fn drift_units(&self, repository: Option<&str>) -> Result<Vec<DriftUnit>, StoreError> {
        let rows = match repository {
            Some(repository) => self.db.query(
                "read drift",
                "SELECT document FROM drift_units WHERE repository = ?1 ORDER BY repository, unit",
                values![repository],
            )?,
            None => self.db.query(
                "read drift",
                "SELECT document FROM drift_units ORDER BY repository, unit",
                &[],
            )?,
        };
        rows.iter()
            .map(|row| {
                let document: String = row.get(0)?;
                serde_json::from_str(&document).map_err(|_| StoreError::Corrupt {
                    what: "drift finding",
                    value: document,
                })
            })
            .collect()
    }

    /// When the last drift run of `repository` was created (scheduled or not), if any.
    pub fn last_drift_run_ms(&self, repository: &str) -> Result<Option<u64>, StoreError> {
        let ms: Option<Option<i64>> = self.lookup(
            "read the last drift run",
            "SELECT max(created_ms) FROM runs WHERE repository = ?1 AND event = 'drift'",
            values![repository],
        )?;
        Ok(ms.flatten().map(|ms| ms as u64))
    }

    /// When each repository's last drift run ended (accepted runs only), for the gauge a
    /// restarted dispatcher shows before its next drift run.
    pub fn drift_runs_ended(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.db
            .query(
                "read drift runs",
                "SELECT repository, max(updated_ms) FROM runs
                 WHERE event = 'drift' AND final = 1 AND rejected IS NULL
                 GROUP BY repository",
                &[],
            )?
            .iter()
            .map(|row| Ok((row.get(0)?, row.get::<i64>(1)? as u64)))
            .collect()
    }

    /// Whether a drift run of `repository` is still running.
    pub fn drift_running(&self, repository: &str) -> Result<bool, StoreError> {
        Ok(self
            .lookup(
                "look for a running drift run",
                "SELECT EXISTS (SELECT 1 FROM runs
                     WHERE repository = ?1 AND event = 'drift' AND final = 0)",
                values![repository],
            )?
            .unwrap_or(false))
    }

    /// What the drift issue of `repository` last said.
    pub fn drift_report(&self, repository: &str) -> Result<Option<DriftReport>, StoreError> {
        self.db
            .query_row(
                "read the drift report",
                "SELECT issue_number, notified, pull_request FROM drift_reports
                 WHERE repository = ?1",
                values![repository],
            )?
            .map(|row| {
                Ok(DriftReport {
                    issue: row.get::<Option<i64>>(0)?.map(|n| n as u64),
                    notified: row.get(1)?,
                    pull_request: row.get::<Option<i64>>(2)?.map(|n| n as u64),
                })
            })
            .transpose()
    }

    /// Records what the drift issue of `repository` says now.
    pub fn set_drift_report(
        &mut self,
        repository: &str,
        report: &DriftReport,
        now: u64,
    ) -> Result<(), StoreError> {
        self.db
            .execute(
                "write the drift report",
                "INSERT INTO drift_reports (repository, issue_number, notified, updated_ms,
                     pull_request)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (repository) DO UPDATE SET issue_number = excluded.issue_number,
                     notified = excluded.notified, updated_ms = excluded.updated_ms,
                     pull_request = excluded.pull_request",
                values![
                    repository,
                    report.issue.map(|n| n as i64),
                    report.notified,
                    now as i64,
                    report.pull_request.map(|n| n as i64)
                ],
            )
            .map(drop)
    }

    /// The most recent runs, newest first.
    pub fn list_runs(&self, limit: usize) -> Result<Vec<RunSummary>, StoreError> {
        self.db
            .query(
                "list runs",
                &format!("{RUN_SUMMARY_SELECT} ORDER BY seq DESC LIMIT ?1"),
                values![limit as i64],
            )?
            .iter()
            .map(|row| self.summary(row))
            .collect()
    }

    /// The most recent runs that pass `filter`, newest first (the web page's list).
    pub fn find_runs(
        &self,
        filter: &RunFilter,
        limit: usize,
    ) -> Result<Vec<RunSummary>, StoreError> {
        let mut clauses = Vec::new();
        let mut values: Vec<Value> = Vec::new();
        let mut clause = |sql: &str, value: Value| {
            values.push(value);
            clauses.push(format!("{sql} ?{}", values.len()));
        };
        if let Some(repository) = &filter.repository {
            clause("repository =", repository.to_value());
        }
        if let Some(event) = filter.event {
            clause("event =", event.as_str().to_value());
        }
        if let Some(state) = &filter.state {
            clause("state =", state.to_value());
        }
        if let Some(number) = filter.pull_request {
            clause("pull_request =", (number as i64).to_value());
        }
        let conditions = if clauses.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", clauses.join(" AND "))
        };
        values.push((limit as i64).to_value());
        self.db
            .query(
                "search runs",
                &format!(
                    "{RUN_SUMMARY_SELECT}{conditions} ORDER BY seq DESC LIMIT ?{}",
                    values.len()
                ),
                &values,
            )?
            .iter()
            .map(|row| self.summary(row))
            .collect()
    }

    /// The run a job belongs to.
    pub fn run_of_job(&self, job_id: Uuid) -> Result<Option<Uuid>, StoreError> {
        let run: Option<String> = self.lookup(
            "find a job's run",
            "SELECT run_id FROM jobs WHERE job_id = ?1",
            values![job_id.to_string()],
        )?;
        run.map(|id| parse_uuid("run id", &id)).transpose()
    }

    /// Who may write a job's log: its run, its attempt, and the worker that holds it now or
    /// reported its outcome (`None`: the job is unknown).
    pub fn job_worker(&self, job_id: Uuid) -> Result<Option<JobWorker>, StoreError> {
        let Some(row) = self.db.query_row(
            "find a job's worker",
            "SELECT jobs.run_id, jobs.attempt, jobs.lease_worker, jobs.log, jobs.account, runs.event
             FROM jobs JOIN runs ON runs.run_id = jobs.run_id WHERE jobs.job_id = ?1",
            values![job_id.to_string()],
        )?
        else {
            return Ok(None);
        };
        let event: String = row.get(5)?;
        let event: EventKind = event.parse().map_err(|_| StoreError::Corrupt {
            what: "event",
            value: event.clone(),
        })?;
        let holder: Option<String> = row.get(2)?;
        // The outcome's log names its worker: `<worker>:<absolute path>`.
        let reporter = row
            .get::<Option<String>>(3)?
            .and_then(|log| log.split_once(":/").map(|(worker, _)| worker.to_owned()));
        Ok(Some(JobWorker {
            run_id: parse_uuid("run id", &row.get::<String>(0)?)?,
            account: row.get(4)?,
            role: ExecutorRole::for_event(event),
            attempt: row.get(1)?,
            worker: holder.or(reporter),
        }))
    }

    /// The repositories that have runs, for the web page's filter.
    pub fn repositories(&self) -> Result<Vec<String>, StoreError> {
        self.db
            .query(
                "list repositories",
                "SELECT DISTINCT repository FROM runs ORDER BY repository",
                &[],
            )?
            .iter()
            .map(|row| row.get(0))
            .collect()
    }

    /// One run and its jobs, by full id or an unambiguous prefix of it.
    pub fn run_detail(&self, id: &str, now: u64) -> Result<RunDetail, StoreError> {
        let prefix = id.trim().to_ascii_lowercase();
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
            return Err(StoreError::UnknownRun(id.to_owned()));
        }
        let matches = self.db.query(
            "read run",
            &format!("{RUN_SUMMARY_SELECT} WHERE run_id LIKE ?1 ORDER BY seq DESC LIMIT 2"),
            values![format!("{prefix}%")],
        )?;
        let row = match matches.len() {
            0 => return Err(StoreError::UnknownRun(id.to_owned())),
            1 => &matches[0],
            count => {
                return Err(StoreError::AmbiguousRun { prefix, count });
            }
        };
        let run = self.summary(row)?;
        let rows = self.db.query(
            "list jobs",
            "SELECT job_id, unit, account, action, state, reason, note, attempt, worker,
                 exit_code, duration_ms, started_ms, output_tail, log, res_add, res_change,
                 res_destroy, finished_ms, policy, approval, drift, requires
             FROM jobs WHERE run_id = ?1 ORDER BY idx",
            values![run.run_id.to_string()],
        )?;
        let mut jobs = Vec::new();
        // Dependencies are kept as positions in the run; they become job ids below.
        let mut requires: Vec<String> = Vec::new();
        for row in &rows {
            requires.push(row.get(21)?);
            let action: String = row.get(3)?;
            let action: Action = action.parse().map_err(|_| StoreError::Corrupt {
                what: "action",
                value: action.clone(),
            })?;
            let state: String = row.get(4)?;
            let state: JobPhase = state.parse().map_err(|_| StoreError::Corrupt {
                what: "job state",
                value: state.clone(),
            })?;
            let exit_code: Option<i32> = row.get(9)?;
            let duration: Option<i64> = row.get(10)?;
            let started: Option<i64> = row.get(11)?;
            let reason = if state == JobPhase::Failed {
                let output_tail: Option<String> = row.get(12)?;
                Some(crate::status::failure_reason(
                    output_tail.as_deref().unwrap_or_default(),
                    exit_code,
                ))
            } else {
                row.get(5)?
            };
            let duration_ms = match (state, duration, started) {
                (_, Some(ms), _) => Some(ms as u64),
                (JobPhase::Running, None, Some(started)) => {
                    Some(now.saturating_sub(started as u64))
                }
                _ => None,
            };
            jobs.push(JobSummary {
                job_id: parse_uuid("job id", &row.get::<String>(0)?)?,
                unit: row.get(1)?,
                account: row.get(2)?,
                action,
                state,
                reason,
                note: row.get(6)?,
                attempt: row.get(7)?,
                worker: row.get(8)?,
                exit_code,
                duration_ms,
                log: row.get(13)?,
                resource_changes: resource_counts(row.get(14)?, row.get(15)?, row.get(16)?),
                started_ms: started.map(|ms| ms as u64),
                finished_ms: row.get::<Option<i64>>(17)?.map(|ms| ms as u64),
                policy: from_json("policy report", row.get(18)?)?,
                approval: from_json("approval gate", row.get(19)?)?,
                drift: from_json("drift findings", row.get(20)?)?,
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

    /// A row of [`RUN_SUMMARY_SELECT`] with its jobs counted by state.
    fn summary(&self, row: &Row) -> Result<RunSummary, StoreError> {
        let id: String = row.get(0)?;
        let run_id = parse_uuid("run id", &id)?;
        let event: String = row.get(2)?;
        let event: EventKind = event.parse().map_err(|_| StoreError::Corrupt {
            what: "event",
            value: event.clone(),
        })?;
        let jobs: BTreeMap<String, u32> = self
            .db
            .query(
                "count jobs",
                "SELECT state, COUNT(*) FROM jobs WHERE run_id = ?1 GROUP BY state",
                values![id],
            )?
            .iter()
            .map(|row| Ok((row.get(0)?, row.get(1)?)))
            .collect::<Result<_, StoreError>>()?;
        let state: String = row.get(5)?;
        let state: RunPhase = state.parse().map_err(|_| StoreError::Corrupt {
            what: "run state",
            value: state.clone(),
        })?;
        Ok(RunSummary {
            run_id,
            repository: row.get(1)?,
            event,
            pull_request: row.get::<Option<i64>>(3)?.map(|n| n as u64),
            head_sha: row.get(4)?,
            state,
            reason: row.get(6)?,
            created_ms: row.get::<i64>(7)? as u64,
            updated_ms: row.get::<i64>(8)? as u64,
            jobs,
        })
    }
}

const RUN_SUMMARY_SELECT: &str = "SELECT run_id, repository, event, pull_request, head_sha, \
     state, reason, created_ms, updated_ms FROM runs";

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
    row: &Row,
    run_id: Uuid,
    repository: &str,
    role: ExecutorRole,
) -> Result<RunJob, StoreError> {
    let action: String = row.get(3)?;
    let action: Action = action.parse().map_err(|_| StoreError::Corrupt {
        what: "action",
        value: action.clone(),
    })?;
    let state: String = row.get(9)?;
    let state = UnitState::from_parts(&state, row.get(10)?).ok_or_else(|| StoreError::Corrupt {
        what: "job state",
        value: state.clone(),
    })?;
    let requires = parse_requires(&row.get::<String>(7)?)?;
    let resource_changes = resource_counts(row.get(16)?, row.get(17)?, row.get(18)?);
    let lease_worker: Option<String> = row.get(13)?;
    let lease_until: Option<i64> = row.get(14)?;
    let millis = |value: Option<i64>| value.map(|ms| ms as u64);
    Ok(RunJob {
        job: Job {
            job_id: parse_uuid("job id", &row.get::<String>(0)?)?,
            run_id,
            repository: repository.to_owned(),
            account: row.get(2)?,
            commit: row.get(4)?,
            unit: row.get(1)?,
            action,
            source_commit: row.get(5)?,
            attempt: row.get(8)?,
            timeout_secs: row.get::<i64>(6)? as u64,
            role,
            policy_override: row.get(29)?,
        },
        requires,
        state,
        note: row.get(11)?,
        not_before_ms: row.get::<i64>(12)? as u64,
        lease: match (lease_worker, lease_until) {
            (Some(worker), Some(until)) => Some(Lease {
                worker,
                until_ms: until as u64,
                reply_to: row.get(24)?,
            }),
            _ => None,
        },
        exit_code: row.get(15)?,
        resource_changes,
        duration_ms: millis(row.get(19)?),
        worker: row.get(20)?,
        output_tail: row.get(21)?,
        started_ms: millis(row.get(22)?),
        finished_ms: millis(row.get(23)?),
        cancel_requested: row.get(25)?,
        log: row.get(26)?,
        policy: from_json("policy report", row.get(27)?)?,
        approval: from_json("approval gate", row.get(28)?)?,
        drift: from_json("drift findings", row.get(30)?)?,
    })
}

/// Keeps what a final drift check found as its unit's last finding (in the batch's
/// transaction, so the finding and the job's state never disagree).
fn record_drift(db: &Db, run: &Run, job: &RunJob, now: u64) -> Result<(), StoreError> {
    let previous: Option<String> = db
        .query_row(
            "read drift",
            "SELECT document FROM drift_units WHERE repository = ?1 AND unit = ?2",
            values![run.repository, job.job.unit],
        )?
        .map(|row| row.get(0))
        .transpose()?;
    let previous: Option<DriftUnit> = from_json("drift finding", previous)?;
    let Some(finding) = dispatcher_core::drift::observe(previous.as_ref(), run, job, now) else {
        return Ok(());
    };
    db.execute(
        "write drift",
        "INSERT INTO drift_units (repository, unit, account, state, document)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (repository, unit) DO UPDATE SET account = excluded.account,
             state = excluded.state, document = excluded.document",
        values![
            finding.repository,
            finding.unit,
            finding.account,
            finding.state.as_str(),
            to_json(&finding)
        ],
    )?;
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

fn parse_uuid(what: &'static str, text: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(text).map_err(|_| StoreError::Corrupt {
        what,
        value: text.to_owned(),
    })
}

/// The tables a copy moves, parents before children, with the columns both engines share
/// (the outbox's `id` is left to the target: it only orders the rows, which the copy keeps).
const COPIED_TABLES: [(&str, &str, &str); 6] = [
    (
        "runs",
        "run_id, seq, repository, event, pull_request, head_sha, base_sha, created_ms, \
         updated_ms, rejected, cancelled, trace, state, reason, final, reported_ms",
        "seq",
    ),
    (
        "jobs",
        "job_id, run_id, idx, unit, account, action, commit_sha, source_commit, timeout_secs, \
         requires, attempt, state, reason, note, not_before_ms, lease_worker, lease_until, \
         lease_reply_to, cancel_requested, log, exit_code, res_add, res_change, res_destroy, \
         duration_ms, worker, output_tail, started_ms, finished_ms, policy, approval, \
         policy_override, drift",
        "run_id, idx",
    ),
    ("job_outputs", "job_id, output", "job_id"),
    (
        "outbox",
        "kind, target, message_id, body, trace, dedup_key",
        "id",
    ),
    (
        "drift_units",
        "repository, unit, account, state, document",
        "repository, unit",
    ),
    (
        "drift_reports",
        "repository, issue_number, notified, updated_ms, pull_request",
        "repository",
    ),
];

impl Store {
    /// Copies every run, job, output, unpublished message and drift finding into `target`,
    /// which must hold no runs yet, in one transaction of the target: it ends with all of it or
    /// none. `progress` hears each table's name and row count as it is done. Run it with the
    /// dispatcher stopped, so that the source does not change meanwhile.
    pub fn copy_into(
        &self,
        target: &Store,
        mut progress: impl FnMut(&str, usize),
    ) -> Result<Vec<(&'static str, usize)>, StoreError> {
        let existing: i64 = target
            .db
            .query_row("count the target's runs", "SELECT COUNT(*) FROM runs", &[])?
            .map_or(Ok(0), |row| row.get(0))?;
        if existing > 0 {
            return Err(StoreError::NotEmpty { runs: existing });
        }
        target.db.transaction(true, |db| {
            let mut copied = Vec::new();
            for (table, columns, order) in COPIED_TABLES {
                let rows = self.db.query(
                    "read for the copy",
                    &format!("SELECT {columns} FROM {table} ORDER BY {order}"),
                    &[],
                )?;
                let placeholders: Vec<String> = (1..=columns.split(',').count())
                    .map(|i| format!("?{i}"))
                    .collect();
                let insert = format!(
                    "INSERT INTO {table} ({columns}) VALUES ({})",
                    placeholders.join(", ")
                );
                for row in &rows {
                    db.execute("write the copy", &insert, &row.0)?;
                }
                progress(table, rows.len());
                copied.push((table, rows.len()));
            }
            Ok(copied)
        })
    }
}

/// The PostgreSQL server tests make their databases on when `PIPELINES_TEST_POSTGRES` names
/// none: this machine's, as `scripts/test.sh` starts it.
pub const TEST_POSTGRES_SERVER: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A PostgreSQL database of its own, dropped (with `FORCE`) when this value is: each test and
/// harness scenario makes one, so they run in parallel. Not used by the product.
#[derive(Debug)]
pub struct ScratchDatabase {
    server: String,
    name: String,
    url: String,
    location: StoreLocation,
}

impl ScratchDatabase {
    /// Creates an empty database on `PIPELINES_TEST_POSTGRES` (a URL ending in `/database`),
    /// else on [`TEST_POSTGRES_SERVER`].
    pub fn create() -> Result<ScratchDatabase, StoreError> {
        let server = std::env::var("PIPELINES_TEST_POSTGRES")
            .unwrap_or_else(|_| TEST_POSTGRES_SERVER.to_owned());
        ScratchDatabase::create_on(&server)
    }

    /// Creates an empty database on the server `server` (a URL ending in `/database`).
    pub fn create_on(server: &str) -> Result<ScratchDatabase, StoreError> {
        let server = server.to_owned();
        let admin = PgConnection::connect(&server).map_err(|err| StoreError::Open {
            path: postgres::shown_url(&server).into(),
            reason: format!(
                "{err}. The PostgreSQL tests need a server: `bash scripts/test.sh` starts the \
                 local one (pg_ctlcluster), or set PIPELINES_TEST_POSTGRES"
            ),
        })?;
        let name = format!("pipelines_test_{}", Uuid::new_v4().simple());
        admin.batch("create a test database", &format!("CREATE DATABASE {name}"))?;
        let base = server
            .rsplit_once('/')
            .map_or(server.as_str(), |(base, _)| base);
        let url = format!("{base}/{name}");
        Ok(ScratchDatabase {
            server,
            name,
            location: StoreLocation::Postgres(url.clone()),
            url,
        })
    }

    pub fn location(&self) -> &StoreLocation {
        &self.location
    }

    /// The database's URL, for a dispatcher's configuration.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        if let Ok(admin) = PgConnection::connect(&self.server) {
            let _ = admin.batch(
                "drop a test database",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            );
        }
    }
}

#[cfg(test)]
mod tests;

/// Runs blocking database work without stalling the runtime's other tasks: on a multi-thread
/// runtime the current worker thread first hands its other tasks to a new one
/// (`block_in_place`); a current-thread runtime (tests) has no other thread to give them to.
/// SQLITE_BUSY is waited on inside (`busy_timeout`), never returned at once.
pub fn off_runtime<T>(work: impl FnOnce() -> T) -> T {
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
