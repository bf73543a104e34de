//! Jobs' whole logs, as their workers stream them ([`LogChunk`] on `pipelines.logs`): written
//! under `state_dir/logs/<run>/<job>/<attempt>-<stream>-<worker>.log`, read back by the web
//! page, and pruned after `dispatcher.log_retention_days`.
//!
//! Each chunk says where its bytes go, so a redelivered or duplicated chunk rewrites the same
//! bytes. A log only grows from its end: a chunk that would leave a hole (an earlier one is
//! being redelivered) goes back to the queue until its predecessor is written, so a log's
//! bytes are always the worker's, without gaps. A log is complete when its end marker arrived
//! (`.end` beside it); a log whose job ended without one was cut (its worker died). Nothing
//! is held in memory but the chunk being written: the page reads the files.
//!
//! Only the worker the run database names as a job's holder (or as the one that reported its
//! outcome) may start a log of the job's current attempt; what it started it may finish. With
//! `dispatcher.executor_users` set, every chunk must also come from the broker user of the
//! job's account and role, as job events must: a worker's name is its own word, its login is
//! RabbitMQ's. A job's run, account and role never change, so they are read once per job
//! ([`Writers`]): a started log's further chunks need no read of the run database.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use broker::topology::{DELIVERY_LIMIT, LOGS_QUEUE};
use broker::{Broker, Delivery};
use config::DispatcherSettings;
use proto_types::{ExecutorRole, LogChunk, Message};
use run_logs::{Budget, Limit, SharedRunLogs};
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::service::DispatchError;

/// Log chunks taken from the broker at once (each at most 256 KiB).
const PREFETCH: u16 = 32;
/// How long a chunk that arrived before the bytes ahead of it waits before it is requeued.
const EARLY_PAUSE: Duration = Duration::from_millis(50);
/// Marks a log whose end arrived; holds `complete` or `truncated`.
const END_SUFFIX: &str = "end";
/// How often logs past `dispatcher.log_retention_days` are looked for.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// Logs one attempt of a job may have. A worker streams one log each time it runs the
/// attempt: once, or again each time the job's message comes back to a worker (its worker
/// died), at most the queue's delivery limit ([`DELIVERY_LIMIT`], 10) times. Each stream
/// number names a file of its own, and an empty one costs the budget nothing: without a
/// bound, a job's holder could fill the directory with them.
pub const MAX_LOGS_PER_ATTEMPT: usize = 32;
/// Jobs whose owners [`Writers`] remembers before it starts afresh: far more than the logs
/// being written at once (one or two per worker), so a live log is rarely read twice.
const KNOWN_JOBS: usize = 4096;

/// Where the logs live, and who wants to hear that one grew.
#[derive(Debug, Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The run database, which says who may write a job's log.
    store: crate::store::StoreLocation,
    root: PathBuf,
    max_bytes: u64,
    /// What all logs together may take (`dispatcher.max_run_log_bytes`,
    /// `max_total_log_bytes`, `log_keep_free_bytes`), and what they take.
    budget: SharedRunLogs,
    /// The job whose log just grew (or ended). Followers re-read the file; a follower that
    /// lags behind just looks again.
    grew: broadcast::Sender<Uuid>,
}

/// One attempt's log on one worker, as the page lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFile {
    pub attempt: u32,
    /// When its worker began streaming it (ms since the epoch, the worker's clock).
    pub stream: u64,
    pub worker: String,
    pub path: PathBuf,
    /// Bytes stored so far.
    pub len: u64,
    pub end: Option<LogEnd>,
    /// When it was last written.
    pub modified: Option<SystemTime>,
}

/// How a log ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogEnd {
    /// Every byte the worker wrote is here.
    Complete,
    /// The log passed `dispatcher.max_log_bytes`; what followed was dropped.
    Truncated,
    /// The run's logs, all logs, or the disk had no more room (`dispatcher.max_run_log_bytes`,
    /// `max_total_log_bytes`, `log_keep_free_bytes`); what followed was dropped.
    OverBudget(Limit),
}

impl LogEnd {
    /// What the end marker and the page call it.
    pub fn as_str(self) -> &'static str {
        match self {
            LogEnd::Complete => "complete",
            LogEnd::Truncated => "truncated",
            LogEnd::OverBudget(Limit::Run) => "truncated-run",
            LogEnd::OverBudget(Limit::Total) => "truncated-total",
            LogEnd::OverBudget(Limit::Disk) => "truncated-disk",
        }
    }

    fn parse(state: &str) -> Option<LogEnd> {
        [
            LogEnd::Complete,
            LogEnd::Truncated,
            LogEnd::OverBudget(Limit::Run),
            LogEnd::OverBudget(Limit::Total),
            LogEnd::OverBudget(Limit::Disk),
        ]
        .into_iter()
        .find(|end| end.as_str() == state)
    }
}

/// Why a chunk could not be kept.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The chunk can never be written (a worker name that cannot name a file, a worker that
    /// does not hold the job): dead-letter it.
    #[error("{0}")]
    Invalid(String),
    /// The chunk starts past the log's end: an earlier chunk is on its way again. Requeue it.
    #[error("a chunk at byte {offset} of a log of {len} bytes waits for the bytes before it")]
    Early { offset: u64, len: u64 },
    /// The disk failed (full, read-only): leave the chunk with the broker and try later.
    #[error("cannot write the log {path}: {reason}")]
    Io { path: PathBuf, reason: String },
}

impl LogStore {
    /// The run database that says who may write a job's log, when it is not the SQLite file
    /// in the state directory.
    pub fn with_store(self, store: crate::store::StoreLocation) -> LogStore {
        self.rebuilt(Some(store), None)
    }

    /// What all logs together may take (by default, as much as they like).
    pub fn with_budget(self, budget: Budget) -> LogStore {
        self.rebuilt(None, Some(budget))
    }

    /// The budget of `dispatcher`'s settings (0: no limit).
    pub fn budget_of(settings: &DispatcherSettings) -> Budget {
        Budget::from_settings(
            settings.max_run_log_bytes,
            settings.max_total_log_bytes,
            settings.log_keep_free_bytes,
        )
    }

    fn rebuilt(
        self,
        store: Option<crate::store::StoreLocation>,
        budget: Option<Budget>,
    ) -> LogStore {
        let inner = &self.inner;
        let budget = budget.unwrap_or_else(|| inner.budget.lock().budget());
        LogStore {
            inner: Arc::new(Inner {
                store: store.unwrap_or_else(|| inner.store.clone()),
                root: inner.root.clone(),
                max_bytes: inner.max_bytes,
                budget: SharedRunLogs::new(inner.root.clone(), budget),
                grew: inner.grew.clone(),
            }),
        }
    }

    /// Logs under `state_dir/logs`, at most `max_bytes` per attempt.
    pub fn new(state_dir: &Path, max_bytes: u64) -> LogStore {
        let (grew, _) = broadcast::channel(1024);
        let root = state_dir.join("logs");
        LogStore {
            inner: Arc::new(Inner {
                store: crate::store::StoreLocation::state_dir(state_dir),
                budget: SharedRunLogs::new(root.clone(), Budget::UNLIMITED),
                root,
                max_bytes,
                grew,
            }),
        }
    }

    /// Hears the job id of every log that grew or ended.
    pub fn subscribe(&self) -> broadcast::Receiver<Uuid> {
        self.inner.grew.subscribe()
    }

    fn job_dir(&self, run_id: Uuid, job_id: Uuid) -> PathBuf {
        self.inner
            .root
            .join(run_id.to_string())
            .join(job_id.to_string())
    }

    fn path_of(&self, chunk: &LogChunk) -> PathBuf {
        self.job_dir(chunk.run_id, chunk.job_id).join(format!(
            "{}-{}-{}.log",
            chunk.attempt, chunk.stream, chunk.worker
        ))
    }

    /// Whether the log `chunk` belongs to was started (its worker was admitted then).
    pub fn started(&self, chunk: &LogChunk) -> bool {
        check_worker_name(&chunk.worker).is_ok() && self.path_of(chunk).exists()
    }

    /// Marks a run's logs to be deleted for room only after every other run's (a push's, whose
    /// applies are the audit trail; blocking).
    pub fn keep_longer(&self, run_id: Uuid) {
        self.inner
            .budget
            .lock()
            .keep_longer(run_id, SystemTime::now());
    }

    /// Writes one chunk where it belongs (blocking file I/O). A chunk from the middle of a log
    /// that was deleted (its run's logs pruned or evicted for room) is dropped: written, it
    /// would start the log again with a hole. A new log of such a run starts as any other.
    pub fn write(&self, chunk: &LogChunk) -> Result<(), LogError> {
        check_worker_name(&chunk.worker)?;
        let mut budget = self.inner.budget.lock();
        let dir = self.job_dir(chunk.run_id, chunk.job_id);
        let path = self.path_of(chunk);
        if chunk.offset > 0 && budget.is_gone(chunk.run_id) && !path.exists() {
            tracing::debug!(run_id = %chunk.run_id, job_id = %chunk.job_id, "Dropping a log chunk of a log that was deleted.");
            return Ok(());
        }
        let io = |err: std::io::Error| LogError::Io {
            path: path.clone(),
            reason: err.to_string(),
        };
        if !path.exists() {
            let logs = logs_of_attempt(&dir, chunk.attempt);
            if logs >= MAX_LOGS_PER_ATTEMPT {
                return Err(LogError::Invalid(format!(
                    "attempt {} of job {} already has {logs} logs, the most it may have \
                     ({MAX_LOGS_PER_ATTEMPT}); a worker streams one each time it runs the attempt, \
                     and this chunk would start another (stream {})",
                    chunk.attempt, chunk.job_id, chunk.stream
                )));
            }
        }
        std::fs::create_dir_all(&dir).map_err(io)?;
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        // Counted (and so pruned and evicted) from its first file on, room or not.
        budget.wrote(chunk.run_id, 0, SystemTime::now());
        let max = self.inner.max_bytes;
        // A log cut for want of room ends where it was cut, even once there is room again.
        let ended = read_end(&path);
        let cut_for_room = ended.and_then(|(end, length)| match end {
            LogEnd::OverBudget(_) => Some(length),
            _ => None,
        });
        let limit = max.min(cut_for_room.unwrap_or(u64::MAX));
        // Past the limit nothing more is kept, so nothing needs to wait for earlier bytes.
        if chunk.offset > len && len < limit {
            return Err(LogError::Early {
                offset: chunk.offset,
                len,
            });
        }
        let bytes = chunk.text.as_bytes();
        let ends_at = chunk.offset.saturating_add(bytes.len() as u64);
        let mut keep = limit.saturating_sub(chunk.offset).min(bytes.len() as u64);
        // What the log grows by: a chunk kept at all starts within the log (else it was early).
        let growth = match keep {
            0 => 0,
            _ => (chunk.offset + keep).saturating_sub(len),
        };
        let mut short = None;
        if growth > 0 {
            let room = budget.room(chunk.run_id, growth, SystemTime::now());
            if room.bytes < growth {
                keep -= growth - room.bytes;
                short = room.short;
                tracing::warn!(
                    run_id = %chunk.run_id,
                    job_id = %chunk.job_id,
                    limit = room.short.map_or("", Limit::as_str),
                    "A job's log is cut: its run's logs, all logs or the disk have no more room."
                );
            }
        }
        if keep > 0 {
            file.seek(SeekFrom::Start(chunk.offset)).map_err(io)?;
            file.write_all(&bytes[..keep as usize]).map_err(io)?;
            budget.wrote(
                chunk.run_id,
                (chunk.offset + keep).saturating_sub(len),
                SystemTime::now(),
            );
        }
        let cut = keep < bytes.len() as u64;
        if cut_for_room.is_none() && (chunk.end || cut) {
            let (end, length) = match short {
                Some(limit) => (LogEnd::OverBudget(limit), chunk.offset + keep),
                // With the length the log will have: an end overtaking a redelivered earlier
                // chunk does not make a log read as complete before its bytes are there.
                None if cut || chunk.offset > max => (LogEnd::Truncated, ends_at.min(max)),
                None => (LogEnd::Complete, ends_at.min(max)),
            };
            if chunk.end || short.is_some() || ended.is_none() {
                file.sync_data().map_err(io)?;
                std::fs::write(end_marker(&path), format!("{} {length}", end.as_str()))
                    .map_err(io)?;
            }
        }
        drop(budget);
        let _ = self.inner.grew.send(chunk.job_id);
        Ok(())
    }

    /// Every log of a job, oldest attempt first.
    pub fn logs(&self, run_id: Uuid, job_id: Uuid) -> Vec<LogFile> {
        let Ok(entries) = std::fs::read_dir(self.job_dir(run_id, job_id)) else {
            return Vec::new();
        };
        let mut logs: Vec<LogFile> = entries
            .flatten()
            .filter_map(|entry| {
                let path = entry.path();
                let name = path.file_name()?.to_str()?.strip_suffix(".log")?.to_owned();
                let (attempt, rest) = name.split_once('-')?;
                let (stream, worker) = rest.split_once('-')?;
                let metadata = entry.metadata().ok()?;
                let end = read_end(&path)
                    .filter(|(_, length)| metadata.len() >= *length)
                    .map(|(end, _)| end);
                Some(LogFile {
                    attempt: attempt.parse().ok()?,
                    stream: stream.parse().ok()?,
                    worker: worker.to_owned(),
                    len: metadata.len(),
                    modified: metadata.modified().ok(),
                    end,
                    path,
                })
            })
            .collect();
        // In the order they began: a late chunk of an older log does not make it the newest.
        logs.sort_by_key(|log| (log.attempt, log.stream));
        logs
    }

    /// Deletes the logs of runs not written to since `before` (blocking). Returns how many
    /// runs' logs went.
    pub fn prune(&self, before: SystemTime) -> usize {
        self.inner.budget.lock().prune_older_than(before)
    }
}

/// Deletes the logs of runs not written for `retention_days`, at start and then hourly, until
/// dropped. It runs beside the log writer (they share the budget's lock), not on the decision
/// loop: a prune of a month of logs deletes many files, and no claim should wait for that.
pub async fn prune_by_age(logs: LogStore, retention_days: u64) {
    let keep = Duration::from_secs(retention_days.saturating_mul(24 * 3600));
    let mut every = tokio::time::interval(PRUNE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let before = SystemTime::now()
            .checked_sub(keep)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let logs = logs.clone();
        match tokio::task::spawn_blocking(move || logs.prune(before)).await {
            Ok(0) => {}
            Ok(runs) => tracing::info!(
                runs,
                log_retention_days = retention_days,
                "Pruned job logs."
            ),
            Err(err) => tracing::warn!(error = %err, "Pruning job logs failed."),
        }
    }
}

/// Up to `max` bytes of `path` from `offset`, cut back to whole UTF-8 characters (blocking).
/// Returns the text and the offset after it.
pub fn read_text(path: &Path, offset: u64, max: usize) -> std::io::Result<(String, u64)> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut buffer = Vec::with_capacity(max.min(1 << 20));
    file.take(max as u64).read_to_end(&mut buffer)?;
    // Reads start at character boundaries, except a page's first read of a long log's tail:
    // the rest of a character cut there is skipped.
    let skipped = buffer
        .iter()
        .take(3)
        .take_while(|byte| *byte & 0xC0 == 0x80)
        .count();
    buffer.drain(..skipped);
    let offset = offset + skipped as u64;
    let whole = match std::str::from_utf8(&buffer) {
        Ok(_) => buffer.len(),
        // A character cut by `max` waits for the next read; anything else is shown replaced.
        Err(err) if buffer.len() - err.valid_up_to() < 4 && err.error_len().is_none() => {
            err.valid_up_to()
        }
        Err(_) => buffer.len(),
    };
    buffer.truncate(whole);
    let text = String::from_utf8_lossy(&buffer).into_owned();
    Ok((text, offset + whole as u64))
}

fn end_marker(log: &Path) -> PathBuf {
    log.with_extension(END_SUFFIX)
}

/// How a log ended and the length it has then, from its end marker.
fn read_end(log: &Path) -> Option<(LogEnd, u64)> {
    let marker = std::fs::read_to_string(end_marker(log)).ok()?;
    // Markers written before 2026-12-04 hold the state alone.
    let (state, length) = marker.split_once(' ').unwrap_or((marker.as_str(), "0"));
    Some((LogEnd::parse(state)?, length.trim().parse().ok()?))
}

/// How many logs of `attempt` the job directory `dir` holds (none when it does not exist).
fn logs_of_attempt(dir: &Path, attempt: u32) -> usize {
    let prefix = format!("{attempt}-");
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .filter(|entry| {
                entry
                    .file_name()
                    .to_str()
                    .is_some_and(|name| name.starts_with(&prefix) && name.ends_with(".log"))
            })
            .count()
    })
}

/// A worker's name becomes part of a file name: plain characters only.
fn check_worker_name(worker: &str) -> Result<(), LogError> {
    if proto_types::is_worker_name(worker) {
        Ok(())
    } else {
        Err(LogError::Invalid(format!(
            "a log chunk from worker {worker:?}, a name that cannot be part of a file name \
             (letters, digits and ._@:- only, at most 128)"
        )))
    }
}

/// Takes log chunks from the broker and writes them, until the broker goes away. A chunk that
/// can never be written (or comes from a worker that may not write the job's log) is
/// dead-lettered with the reason; one that must wait for earlier bytes, or that the disk
/// refused, goes back to the queue after a pause. The run database (read-only) says who may
/// write.
pub async fn consume(
    broker: Broker,
    logs: LogStore,
    senders: DispatcherSettings,
) -> Result<(), DispatchError> {
    let writers = Arc::new(Writers::new(crate::store::Store::connect_read_only(
        &logs.inner.store,
    )?));
    let mut consumer = broker.consume(LOGS_QUEUE, PREFETCH).await?;
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery?;
        handle(&logs, &writers, &senders, delivery).await?;
    }
    Err(DispatchError::ConsumerClosed("logs"))
}

/// Whose a job is: what a chunk's sender is checked against once the job's log has started.
/// None of it changes during a job's life.
#[derive(Debug, Clone)]
struct JobOwner {
    run_id: Uuid,
    account: String,
    role: ExecutorRole,
}

/// Who may write a job's log: the run database (read-only), and the owners of the jobs it was
/// asked about, remembered so that the chunks of a log already started are checked without a
/// read (with `executor_users` set, that was a round trip per chunk on PostgreSQL, and a log
/// stalled while the database was away).
struct Writers {
    store: Mutex<crate::store::Store>,
    owners: Mutex<HashMap<Uuid, JobOwner>>,
}

impl Writers {
    fn new(store: crate::store::Store) -> Writers {
        Writers {
            store: Mutex::new(store),
            owners: Mutex::new(HashMap::new()),
        }
    }

    fn remembered(&self, job_id: Uuid) -> Option<JobOwner> {
        let owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        owners.get(&job_id).cloned()
    }

    /// The job's holder and owner from the run database; the owner is remembered.
    fn read(&self, job_id: Uuid) -> Result<Option<crate::store::JobWorker>, LogError> {
        let found = self
            .store
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .job_worker(job_id)
            .map_err(|err| LogError::Io {
                path: PathBuf::from("the run database"),
                reason: err.to_string(),
            })?;
        if let Some(job) = &found {
            let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
            // Starting afresh keeps the map bounded; a live log's next chunk reads once more.
            if owners.len() >= KNOWN_JOBS {
                owners.clear();
            }
            owners.insert(
                job_id,
                JobOwner {
                    run_id: job.run_id,
                    account: job.account.clone(),
                    role: job.role,
                },
            );
        }
        Ok(found)
    }
}

/// Whether `chunk`'s worker may write the log it belongs to: it started it already, or the run
/// database names it as the holder of the job's current attempt (or as the worker that
/// reported its outcome). Like job events, a worker speaks only for jobs it was granted; and
/// with `executor_users` set, `user` (the broker user RabbitMQ checked) must be the one of the
/// job's account and role, for every chunk: a log once started is no open door. Admitted, the
/// job's role when it was looked up (always at a log's first chunk).
fn admit(
    logs: &LogStore,
    writers: &Writers,
    chunk: &LogChunk,
    user: Option<&str>,
    senders: &DispatcherSettings,
) -> Result<Option<ExecutorRole>, LogError> {
    let bound_to_users = senders.executor_users.is_some();
    let started = logs.started(chunk);
    if started {
        if !bound_to_users {
            return Ok(None);
        }
        if let Some(owner) = writers.remembered(chunk.job_id) {
            return check_owner(&owner, chunk, user, senders).map(|()| Some(owner.role));
        }
    }
    let Some(job) = writers.read(chunk.job_id)? else {
        return refuse(chunk, "no such job".into());
    };
    let owner = JobOwner {
        run_id: job.run_id,
        account: job.account,
        role: job.role,
    };
    check_owner(&owner, chunk, user, senders)?;
    let holder = job.attempt == chunk.attempt && job.worker.as_deref() == Some(&chunk.worker);
    if holder || started {
        return Ok(Some(job.role));
    }
    refuse(
        chunk,
        format!(
            "the job is at attempt {} on {}",
            job.attempt,
            job.worker.as_deref().unwrap_or("no worker")
        ),
    )
}

/// Whether `chunk` names its job's run and, with `executor_users` set, came from the job's
/// account's and role's broker user.
fn check_owner(
    owner: &JobOwner,
    chunk: &LogChunk,
    user: Option<&str>,
    senders: &DispatcherSettings,
) -> Result<(), LogError> {
    if owner.run_id != chunk.run_id {
        return refuse(
            chunk,
            format!(
                "the job belongs to run {}, not {}",
                owner.run_id, chunk.run_id
            ),
        );
    }
    if let Some(expected) =
        senders.executor_user_mismatch(&owner.account, owner.role.as_str(), user)
    {
        return refuse(
            chunk,
            format!(
                "sent by broker user {:?}; only {expected:?} may write the logs of account {:?} ({}) (dispatcher.executor_users)",
                user.unwrap_or("(none)"),
                owner.account,
                owner.role
            ),
        );
    }
    Ok(())
}

fn refuse<T>(chunk: &LogChunk, why: String) -> Result<T, LogError> {
    Err(LogError::Invalid(format!(
        "a log chunk of job {} attempt {} from worker {:?}: {why}",
        chunk.job_id, chunk.attempt, chunk.worker
    )))
}

async fn handle(
    logs: &LogStore,
    writers: &Arc<Writers>,
    senders: &DispatcherSettings,
    delivery: Delivery,
) -> Result<(), DispatchError> {
    let chunk = match proto_types::decode(&delivery.body) {
        Ok(Message::LogChunk(chunk)) => chunk,
        Ok(other) => {
            let reason = format!(
                "a {} message on the logs queue, which takes LogChunk",
                other.kind()
            );
            tracing::warn!(%reason, "Dead-lettering a message.");
            return Ok(delivery.dead_letter(&reason).await?);
        }
        Err(err) => {
            let reason = format!("undecodable log chunk: {err}");
            tracing::warn!(%reason, "Dead-lettering a message.");
            return Ok(delivery.dead_letter(&reason).await?);
        }
    };
    let store = logs.clone();
    let writers = writers.clone();
    let senders = senders.clone();
    let user = delivery.user_id.clone();
    let written = tokio::task::spawn_blocking(move || {
        // A push's logs (its applies') are deleted for room after pull requests'.
        if admit(&store, &writers, &chunk, user.as_deref(), &senders)? == Some(ExecutorRole::Apply)
        {
            store.keep_longer(chunk.run_id);
        }
        store.write(&chunk)
    })
    .await
    .unwrap_or_else(|err| {
        Err(LogError::Io {
            path: PathBuf::new(),
            reason: err.to_string(),
        })
    });
    match written {
        Ok(()) => Ok(delivery.ack().await?),
        Err(LogError::Invalid(reason)) => {
            tracing::warn!(%reason, "Dead-lettering a log chunk.");
            Ok(delivery.dead_letter(&reason).await?)
        }
        // On its last delivery the broker would drop it into the dead letters unexplained.
        Err(early @ LogError::Early { .. }) if delivery.is_last_chance() => {
            let reason = format!("{early}, which did not come in {DELIVERY_LIMIT} deliveries");
            tracing::warn!(%reason, "Dead-lettering a log chunk.");
            Ok(delivery.dead_letter(&reason).await?)
        }
        Err(early @ LogError::Early { .. }) => {
            tracing::debug!(reason = %early, "A log chunk goes back to the queue.");
            tokio::time::sleep(EARLY_PAUSE).await;
            Ok(delivery.requeue().await?)
        }
        Err(err) => {
            tracing::error!(error = %err, "A log chunk goes back to the queue.");
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok(delivery.requeue().await?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(offset: u64, text: &str, end: bool) -> LogChunk {
        LogChunk {
            job_id: Uuid::from_u128(2),
            run_id: Uuid::from_u128(1),
            attempt: 1,
            worker: "prod-apply-1".into(),
            stream: 7,
            offset,
            text: text.into(),
            end,
        }
    }

    #[test]
    fn an_attempt_has_at_most_a_few_logs_however_many_streams_its_chunks_name() {
        let dir = tempfile::tempdir().unwrap();
        let logs = LogStore::new(dir.path(), 1 << 20);
        let of_stream = |stream: u64, offset: u64, text: &str| LogChunk {
            stream,
            ..chunk(offset, text, false)
        };
        for stream in 0..MAX_LOGS_PER_ATTEMPT as u64 {
            logs.write(&of_stream(stream, 0, "")).unwrap();
        }
        let one_more = MAX_LOGS_PER_ATTEMPT as u64;
        match logs.write(&of_stream(one_more, 0, "")) {
            Err(LogError::Invalid(reason)) => assert!(
                reason.contains(&format!(
                    "attempt 1 of job {} already has {MAX_LOGS_PER_ATTEMPT} logs",
                    Uuid::from_u128(2)
                )) && reason.contains(&format!("(stream {one_more})")),
                "{reason}"
            ),
            other => panic!("a log past the bound was not refused: {other:?}"),
        }
        let listed = logs.logs(Uuid::from_u128(1), Uuid::from_u128(2));
        assert_eq!(listed.len(), MAX_LOGS_PER_ATTEMPT, "{listed:?}");
        // The logs it has still grow, and another attempt has logs of its own.
        logs.write(&of_stream(0, 0, "still written")).unwrap();
        let mut next_attempt = of_stream(one_more, 0, "x");
        next_attempt.attempt = 2;
        logs.write(&next_attempt).unwrap();
        let listed = logs.logs(Uuid::from_u128(1), Uuid::from_u128(2));
        assert_eq!(listed.len(), MAX_LOGS_PER_ATTEMPT + 1, "{listed:?}");
        assert!(listed.iter().any(|log| log.stream == 0 && log.len == 13));
    }

    #[test]
    fn chunks_in_any_order_and_repeated_make_the_same_log() {
        let dir = tempfile::tempdir().unwrap();
        let logs = LogStore::new(dir.path(), 1 << 20);
        let mut grew = logs.subscribe();
        assert!(
            matches!(
                logs.write(&chunk(6, "world\n", false)),
                Err(LogError::Early { offset: 6, len: 0 })
            ),
            "a chunk past the end waits (requeued) for the bytes before it"
        );
        logs.write(&chunk(0, "hello ", false)).unwrap();
        logs.write(&chunk(0, "hello ", false)).unwrap();
        logs.write(&chunk(6, "world\n", false)).unwrap();
        let listed = logs.logs(Uuid::from_u128(1), Uuid::from_u128(2));
        assert_eq!(listed.len(), 1);
        assert_eq!(
            listed[0].end, None,
            "no end marker yet: a job that ended now was cut"
        );
        logs.write(&chunk(12, "", true)).unwrap();
        let listed = logs.logs(Uuid::from_u128(1), Uuid::from_u128(2));
        assert_eq!(listed[0].end, Some(LogEnd::Complete));
        assert_eq!(
            (listed[0].attempt, listed[0].worker.as_str()),
            (1, "prod-apply-1")
        );
        assert_eq!(
            std::fs::read_to_string(&listed[0].path).unwrap(),
            "hello world\n"
        );
        assert_eq!(grew.try_recv().unwrap(), Uuid::from_u128(2));
    }

    #[test]
    fn an_end_that_overtakes_the_last_bytes_waits_for_them() {
        let dir = tempfile::tempdir().unwrap();
        let logs = LogStore::new(dir.path(), 1 << 20);
        logs.write(&chunk(0, "hello ", false)).unwrap();
        assert!(matches!(
            logs.write(&chunk(12, "", true)),
            Err(LogError::Early { offset: 12, len: 6 })
        ));
        let listed = logs.logs(Uuid::from_u128(1), Uuid::from_u128(2));
        assert_eq!(listed[0].end, None, "6 of 12 bytes: not complete yet");
        logs.write(&chunk(6, "world\n", false)).unwrap();
        logs.write(&chunk(12, "", true)).unwrap();
        let listed = logs.logs(Uuid::from_u128(1), Uuid::from_u128(2));
        assert_eq!(listed[0].end, Some(LogEnd::Complete));
        assert_eq!(listed[0].len, 12);
    }

    #[test]
    fn offsets_past_the_cap_are_dropped_without_overflow() {
        let dir = tempfile::tempdir().unwrap();
        let logs = LogStore::new(dir.path(), 8);
        logs.write(&chunk(0, "01234567", false)).unwrap();
        logs.write(&chunk(u64::MAX, "boom", true)).unwrap();
        let listed = logs.logs(Uuid::from_u128(1), Uuid::from_u128(2));
        assert_eq!(listed[0].len, 8);
        assert_eq!(listed[0].end, Some(LogEnd::Truncated));
    }

    #[test]
    fn the_same_attempt_run_again_by_the_same_worker_is_a_new_log_listed_last() {
        let dir = tempfile::tempdir().unwrap();
        let logs = LogStore::new(dir.path(), 1 << 20);
        logs.write(&chunk(
            0,
            "first run, longer, then the worker died\n",
            false,
        ))
        .unwrap();
        let again = |offset, text: &str, end| LogChunk {
            stream: 9,
            ..chunk(offset, text, end)
        };
        logs.write(&again(0, "second\n", false)).unwrap();
        logs.write(&again(7, "", true)).unwrap();
        // A late chunk of the first run does not make it the newest.
        logs.write(&chunk(40, "!", false)).unwrap();
        let listed = logs.logs(Uuid::from_u128(1), Uuid::from_u128(2));
        assert_eq!(listed.len(), 2);
        assert_eq!((listed[0].stream, listed[0].end), (7, None));
        assert_eq!(
            (listed[1].stream, listed[1].end),
            (9, Some(LogEnd::Complete))
        );
        assert_eq!(
            std::fs::read_to_string(&listed[1].path).unwrap(),
            "second\n"
        );
    }

    #[test]
    fn a_runs_logs_past_max_run_log_bytes_are_cut_and_say_why_and_stay_cut() {
        let dir = tempfile::tempdir().unwrap();
        let logs = LogStore::new(dir.path(), 1 << 20).with_budget(Budget::from_settings(10, 0, 0));
        logs.write(&chunk(0, "0123456789abc", false)).unwrap();
        // Later chunks are dropped, not requeued, though they start past the log's end.
        logs.write(&chunk(13, "more", false)).unwrap();
        logs.write(&chunk(17, "", true)).unwrap();
        let listed = logs.logs(Uuid::from_u128(1), Uuid::from_u128(2));
        assert_eq!(listed[0].len, 10);
        assert_eq!(listed[0].end, Some(LogEnd::OverBudget(Limit::Run)));
        assert_eq!(
            std::fs::read_to_string(&listed[0].path).unwrap(),
            "0123456789"
        );
        // Another job of the same run has no room left either; another run has its own.
        let other_job = LogChunk {
            job_id: Uuid::from_u128(3),
            ..chunk(0, "x", false)
        };
        logs.write(&other_job).unwrap();
        let listed = logs.logs(Uuid::from_u128(1), Uuid::from_u128(3));
        assert_eq!(
            (listed[0].len, listed[0].end),
            (0, Some(LogEnd::OverBudget(Limit::Run)))
        );
        let other_run = LogChunk {
            run_id: Uuid::from_u128(4),
            ..chunk(0, "x", true)
        };
        logs.write(&other_run).unwrap();
        let listed = logs.logs(Uuid::from_u128(4), Uuid::from_u128(2));
        assert_eq!((listed[0].len, listed[0].end), (1, Some(LogEnd::Complete)));
    }

    #[test]
    fn an_idle_runs_logs_make_room_and_its_late_chunks_are_dropped_not_requeued() {
        let dir = tempfile::tempdir().unwrap();
        let logs = LogStore::new(dir.path(), 1 << 20).with_budget(Budget::from_settings(0, 30, 0));
        let old_run = Uuid::from_u128(9);
        let old = LogChunk {
            run_id: old_run,
            ..chunk(0, "twenty bytes of log\n", false)
        };
        logs.write(&old).unwrap();
        // Written an hour ago, as far as the files say, and counted from them.
        let hour_ago = SystemTime::now() - Duration::from_secs(3600);
        let run_dir = dir.path().join("logs").join(old_run.to_string());
        let job_dir = run_dir.join(Uuid::from_u128(2).to_string());
        for path in [
            &run_dir,
            &job_dir,
            &logs.logs(old_run, Uuid::from_u128(2))[0].path,
        ] {
            File::open(path).unwrap().set_modified(hour_ago).unwrap();
        }
        let logs = logs.with_budget(Budget::from_settings(0, 30, 0));

        logs.write(&chunk(0, "another twenty bytes", false))
            .unwrap();
        assert!(!run_dir.exists(), "the idle run's logs went to make room");
        assert_eq!(logs.logs(Uuid::from_u128(1), Uuid::from_u128(2))[0].len, 20);
        logs.write(&LogChunk {
            offset: 20,
            ..old.clone()
        })
        .unwrap();
        assert!(
            !run_dir.exists(),
            "a late chunk does not start the log again"
        );
        // A job of that run that starts now (it waited for an approval, say) has its log.
        let waited = LogChunk {
            job_id: Uuid::from_u128(5),
            offset: 0,
            text: "new\n".into(),
            ..old.clone()
        };
        logs.write(&waited).unwrap();
        assert_eq!(logs.logs(old_run, Uuid::from_u128(5))[0].len, 4);

        // Nothing idle is left: the writer's own log is cut at the total.
        logs.write(&chunk(20, "and twenty more bytes", false))
            .unwrap();
        let listed = logs.logs(Uuid::from_u128(1), Uuid::from_u128(2));
        assert_eq!(
            (listed[0].len, listed[0].end),
            (26, Some(LogEnd::OverBudget(Limit::Total)))
        );
    }

    #[test]
    fn a_log_past_the_limit_is_cut_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let logs = LogStore::new(dir.path(), 8);
        logs.write(&chunk(0, "0123456789", false)).unwrap();
        logs.write(&chunk(10, "more", true)).unwrap();
        let listed = logs.logs(Uuid::from_u128(1), Uuid::from_u128(2));
        assert_eq!(
            std::fs::read_to_string(&listed[0].path).unwrap(),
            "01234567"
        );
        assert_eq!(listed[0].end, Some(LogEnd::Truncated));
    }

    /// A push run's one apply job of `unit`, claimed by w1 at attempt 1, in the run database
    /// under `dir`; the logs' read-only view of that database and their store.
    struct Claimed {
        store: crate::store::Store,
        scheduler: crate::scheduler::Scheduler,
        job: proto_types::Job,
        writers: Writers,
        logs: LogStore,
    }

    fn claimed_by_w1(dir: &Path, unit: &str) -> Claimed {
        use crate::scheduler::Scheduler;
        use crate::store::Store;
        use crate::testing::{event, push, settings};
        use proto_types::Action;

        let mut store = Store::open(dir).unwrap();
        let mut scheduler = Scheduler::new(settings());
        let (event, plan) = event(push(), &[(unit, Action::Apply)], &[]);
        let effects = scheduler.accept(&event, &plan, 1);
        crate::testing::commit(&mut store, &scheduler, &effects, &[], 1);
        let job = effects.publish[0].clone();
        let (_, claimed) = scheduler.claim(job.job_id, 1, "w1", false, Some("amq.gen-w1"), 2);
        crate::testing::commit(&mut store, &scheduler, &claimed, &[], 2);
        Claimed {
            store,
            scheduler,
            job,
            writers: Writers::new(Store::open_read_only(dir).unwrap()),
            logs: LogStore::new(dir, 1 << 20),
        }
    }

    impl Claimed {
        /// One byte of the job's log at `offset`, as `worker` would send it for `attempt`.
        fn chunk(&self, worker: &str, attempt: u32, offset: u64) -> LogChunk {
            LogChunk {
                job_id: self.job.job_id,
                run_id: self.job.run_id,
                attempt,
                worker: worker.into(),
                stream: 1,
                offset,
                text: "x".into(),
                end: false,
            }
        }

        /// w1 reports the job succeeded: its lease ends, the outcome names w1.
        fn finish(&mut self) {
            use crate::testing::outcome;
            use proto_types::JobStatus;
            let succeeded = outcome(JobStatus::Succeeded, "");
            let finished = self
                .scheduler
                .finish(self.job.job_id, 1, "w1", &succeeded, 3);
            crate::testing::commit(&mut self.store, &self.scheduler, &finished, &[], 3);
        }
    }

    /// Sender checks on, and the broker user of `prod/app`'s apply job under them.
    fn per_account_and_role() -> (DispatcherSettings, Option<&'static str>) {
        let senders = DispatcherSettings {
            executor_users: Some("executor-{account}-{role}".into()),
            ..DispatcherSettings::default()
        };
        (senders, Some("executor-prod-apply"))
    }

    /// Why `admit` refused `chunk` from `user`; fails if it did not.
    fn refusal(
        claimed: &Claimed,
        chunk: &LogChunk,
        user: Option<&str>,
        senders: &DispatcherSettings,
    ) -> String {
        match admit(&claimed.logs, &claimed.writers, chunk, user, senders) {
            Err(LogError::Invalid(reason)) => reason,
            other => panic!("{chunk:?} from {user:?} was not refused: {other:?}"),
        }
    }

    #[test]
    fn a_pushs_log_is_admitted_with_its_role_and_kept_longer() {
        let dir = tempfile::tempdir().unwrap();
        let c = claimed_by_w1(dir.path(), "a");
        let anyone = DispatcherSettings::default();
        let role = admit(&c.logs, &c.writers, &c.chunk("w1", 1, 0), None, &anyone).unwrap();
        assert_eq!(
            role,
            Some(ExecutorRole::Apply),
            "read at a log's first chunk"
        );
        c.logs.keep_longer(c.job.run_id);
        let mark = dir
            .path()
            .join("logs")
            .join(c.job.run_id.to_string())
            .join(".keep-longer");
        assert!(
            mark.exists(),
            "the mark outlives a restart: {}",
            mark.display()
        );
        c.logs.write(&c.chunk("w1", 1, 0)).unwrap();
        assert_eq!(c.logs.logs(c.job.run_id, c.job.job_id)[0].len, 1);
    }

    #[test]
    fn only_the_holder_starts_a_log_and_may_finish_what_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let mut claimed = claimed_by_w1(dir.path(), "a");
        let anyone = DispatcherSettings::default();
        let admitted = |claimed: &Claimed, chunk: &LogChunk| {
            admit(&claimed.logs, &claimed.writers, chunk, None, &anyone)
        };
        let refused = |claimed: &Claimed, chunk: &LogChunk| refusal(claimed, chunk, None, &anyone);
        let c = &claimed;
        assert!(refused(c, &c.chunk("w2", 1, 0)).contains("the job is at attempt 1 on w1"));
        assert!(refused(c, &c.chunk("w1", 2, 0)).contains("the job is at attempt 1 on w1"));
        let mut elsewhere = c.chunk("w1", 1, 0);
        elsewhere.run_id = Uuid::from_u128(99);
        assert!(refused(c, &elsewhere).contains("belongs to run"));
        let mut unknown = c.chunk("w1", 1, 0);
        unknown.job_id = Uuid::from_u128(98);
        assert!(refused(c, &unknown).contains("no such job"));
        assert!(
            c.logs.logs(c.job.run_id, c.job.job_id).is_empty(),
            "nothing written"
        );

        admitted(c, &c.chunk("w1", 1, 0)).unwrap();
        c.logs.write(&c.chunk("w1", 1, 0)).unwrap();
        // The job ends (and the lease with it): w1 finishes its log, and reported the outcome.
        claimed.finish();
        let c = &claimed;
        admitted(c, &c.chunk("w1", 1, 1)).unwrap();
        let mut another_stream = c.chunk("w1", 1, 0);
        another_stream.stream = 2;
        admitted(c, &another_stream).unwrap();
        assert!(refused(c, &c.chunk("w2", 1, 0)).contains("on w1"));
    }

    /// With `executor_users` set, a chunk must come from the job's account's and role's broker
    /// user, even for a log its worker started: the worker's name in a chunk is the sender's
    /// word, and both it and the job id are on the web page.
    #[test]
    fn with_executor_users_set_only_the_jobs_own_user_writes_its_log_even_once_started() {
        let dir = tempfile::tempdir().unwrap();
        let mut claimed = claimed_by_w1(dir.path(), "prod/app");
        let (senders, own) = per_account_and_role();
        let admitted = |claimed: &Claimed, chunk: &LogChunk| {
            admit(&claimed.logs, &claimed.writers, chunk, own, &senders)
        };
        let c = &claimed;
        for user in [Some("executor-prod-plan"), Some("executor-dev-apply"), None] {
            let reason = refusal(c, &c.chunk("w1", 1, 0), user, &senders);
            assert!(
                reason.contains(&format!(
                    "sent by broker user {:?}; only \"executor-prod-apply\" may write the logs of account \"prod\" (apply)",
                    user.unwrap_or("(none)")
                )),
                "{reason}"
            );
        }
        admitted(c, &c.chunk("w1", 1, 0)).unwrap();
        c.logs.write(&c.chunk("w1", 1, 0)).unwrap();
        assert!(c.logs.started(&c.chunk("w1", 1, 1)), "the log exists now");
        let reason = refusal(c, &c.chunk("w1", 1, 1), Some("executor-dev-plan"), &senders);
        assert!(reason.contains("only \"executor-prod-apply\""), "{reason}");
        admitted(c, &c.chunk("w1", 1, 1)).unwrap();

        // After the job ended, its own user still finishes the log; no other user may.
        claimed.finish();
        let c = &claimed;
        admitted(c, &c.chunk("w1", 1, 1)).unwrap();
        let other = Some("executor-dev-apply");
        assert!(refusal(c, &c.chunk("w1", 1, 1), other, &senders).contains("only"));
        // The user is right but the worker never held the job: still refused.
        let reason = refusal(c, &c.chunk("w2", 1, 0), own, &senders);
        assert!(reason.contains("the job is at attempt 1 on w1"), "{reason}");
    }

    /// With `executor_users` set, a worker that gave its job back (so holds it no more) still
    /// finishes the log it started, as its own user; it may start no new one.
    #[test]
    fn with_executor_users_set_a_started_log_is_finished_after_its_job_was_given_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut claimed = claimed_by_w1(dir.path(), "prod/app");
        let (senders, own) = per_account_and_role();
        claimed.logs.write(&claimed.chunk("w1", 1, 0)).unwrap();
        let released = claimed.scheduler.release(claimed.job.job_id, 1, "w1", 3);
        crate::testing::commit(&mut claimed.store, &claimed.scheduler, &released, &[], 3);
        let c = &claimed;
        let holder = c
            .writers
            .store
            .lock()
            .unwrap()
            .job_worker(c.job.job_id)
            .unwrap();
        assert_ne!(
            holder.unwrap().worker.as_deref(),
            Some("w1"),
            "w1 gave it back"
        );
        admit(&c.logs, &c.writers, &c.chunk("w1", 1, 1), own, &senders).unwrap();
        let other = Some("executor-dev-apply");
        assert!(refusal(c, &c.chunk("w1", 1, 1), other, &senders).contains("only"));
        let mut new_log = c.chunk("w1", 1, 0);
        new_log.stream = 2;
        let reason = refusal(c, &new_log, own, &senders);
        assert!(reason.contains("the job is at attempt"), "{reason}");
    }

    /// With `executor_users` set, a started log's chunks are checked against the job's owner
    /// as the run database gave it at the log's first chunk, without reading it again: once
    /// the job's run is gone from the database, the job's own user still finishes its log and
    /// other users are still refused, while a log not yet started is read for, and refused.
    #[test]
    fn with_executor_users_set_a_started_logs_chunks_are_checked_without_reading_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let mut claimed = claimed_by_w1(dir.path(), "prod/app");
        let (senders, own) = per_account_and_role();
        let c = &claimed;
        admit(&c.logs, &c.writers, &c.chunk("w1", 1, 0), own, &senders).unwrap();
        c.logs.write(&c.chunk("w1", 1, 0)).unwrap();
        claimed.finish();
        let pruned = claimed.store.prune_finished(u64::MAX).unwrap();
        assert_eq!(pruned, 1, "the finished run is deleted");
        let c = &claimed;
        let gone = c.writers.store.lock().unwrap().job_worker(c.job.job_id);
        assert!(
            gone.unwrap().is_none(),
            "the database no longer knows the job"
        );

        admit(&c.logs, &c.writers, &c.chunk("w1", 1, 1), own, &senders).unwrap();
        let other = Some("executor-prod-plan");
        let reason = refusal(c, &c.chunk("w1", 1, 1), other, &senders);
        assert!(reason.contains("only \"executor-prod-apply\""), "{reason}");
        let mut new_log = c.chunk("w1", 1, 0);
        new_log.stream = 2;
        assert!(refusal(c, &new_log, own, &senders).contains("no such job"));
    }

    #[test]
    fn worker_names_that_are_not_plain_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let logs = LogStore::new(dir.path(), 1 << 20);
        for worker in ["../../etc/passwd", "", ".hidden", "a/b", "w\n1"] {
            let mut bad = chunk(0, "x", false);
            bad.worker = worker.into();
            assert!(
                matches!(logs.write(&bad), Err(LogError::Invalid(_))),
                "{worker:?} was accepted"
            );
        }
        assert!(!dir.path().join("logs/etc").exists());
    }

    #[test]
    fn reads_stop_at_whole_characters() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, "añb").unwrap();
        // "ñ" is two bytes: a read of two stops before it, the next read takes it whole.
        let (text, next) = read_text(&path, 0, 2).unwrap();
        assert_eq!((text.as_str(), next), ("a", 1));
        let (text, next) = read_text(&path, next, 64).unwrap();
        assert_eq!((text.as_str(), next), ("ñb", 4));
        // From inside "ñ" (a long log's tail): the rest of it is skipped.
        let (text, next) = read_text(&path, 2, 64).unwrap();
        assert_eq!((text.as_str(), next), ("b", 4));
    }

    #[test]
    fn pruning_removes_only_old_runs() {
        let dir = tempfile::tempdir().unwrap();
        let logs = LogStore::new(dir.path(), 1 << 20);
        logs.write(&chunk(0, "x", true)).unwrap();
        assert_eq!(logs.prune(SystemTime::now() - Duration::from_secs(3600)), 0);
        assert_eq!(logs.prune(SystemTime::now() + Duration::from_secs(3600)), 1);
        assert!(logs.logs(Uuid::from_u128(1), Uuid::from_u128(2)).is_empty());
    }

    #[tokio::test]
    async fn the_pruning_task_deletes_logs_past_the_retention_as_it_starts_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let logs = LogStore::new(dir.path(), 1 << 20);
        logs.write(&chunk(0, "old", true)).unwrap();
        let recent = LogChunk {
            run_id: Uuid::from_u128(3),
            job_id: Uuid::from_u128(4),
            ..chunk(0, "recent", true)
        };
        logs.write(&recent).unwrap();
        let old_run = dir.path().join("logs").join(Uuid::from_u128(1).to_string());
        let forty_days_ago = SystemTime::now() - Duration::from_secs(40 * 86_400);
        for entry in walk(&old_run) {
            File::open(entry)
                .unwrap()
                .set_modified(forty_days_ago)
                .unwrap();
        }

        // As the dispatcher starts again: the sizes and ages are counted from the files.
        let logs = LogStore::new(dir.path(), 1 << 20);
        let pruning = tokio::spawn(prune_by_age(logs.clone(), 30));
        let mut poll = tokio::time::interval(Duration::from_millis(10));
        tokio::time::timeout(Duration::from_secs(30), async {
            while old_run.exists() {
                poll.tick().await;
            }
        })
        .await
        .expect("the run written 40 days ago is pruned when the task starts");
        // The prune holds the budget's lock until it is through every run.
        drop(logs.inner.budget.lock());
        pruning.abort();
        assert_eq!(logs.logs(Uuid::from_u128(3), Uuid::from_u128(4)).len(), 1);
    }

    /// `dir` and everything under it, deepest first.
    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            if entry.file_type().unwrap().is_dir() {
                found.extend(walk(&entry.path()));
            } else {
                found.push(entry.path());
            }
        }
        found.push(dir.to_owned());
        found
    }
}
