//! Jobs' whole logs, as their workers stream them ([`LogChunk`] on `pipelines.logs`): written
//! under `state_dir/logs/<run>/<job>/<attempt>-<worker>.log`, read back by the web page, and
//! pruned after `dispatcher.log_retention_days`.
//!
//! Each chunk says where its bytes go, so a redelivered or duplicated chunk rewrites the same
//! bytes, and chunks may arrive in any order. A log is complete when its end marker arrived
//! (`.end` beside it); a log whose job ended without one was cut (its worker died). Nothing
//! is held in memory but the chunk being written: the page reads the files.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use broker::topology::LOGS_QUEUE;
use broker::{Broker, Delivery};
use proto_types::{LogChunk, Message};
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::service::DispatchError;

/// Log chunks taken from the broker at once (each at most 256 KiB).
const PREFETCH: u16 = 32;
/// Marks a log whose end arrived; holds `complete` or `truncated`.
const END_SUFFIX: &str = "end";

/// Where the logs live, and who wants to hear that one grew.
#[derive(Debug, Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    max_bytes: u64,
    /// The job whose log just grew (or ended). Followers re-read the file; a follower that
    /// lags behind just looks again.
    grew: broadcast::Sender<Uuid>,
}

/// One attempt's log on one worker, as the page lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFile {
    pub attempt: u32,
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
}

/// Why a chunk could not be kept.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The chunk can never be written (a worker name that cannot name a file): dead-letter it.
    #[error("{0}")]
    Invalid(String),
    /// The disk failed (full, read-only): leave the chunk with the broker and try later.
    #[error("cannot write the log {path}: {reason}")]
    Io { path: PathBuf, reason: String },
}

impl LogStore {
    /// Logs under `state_dir/logs`, at most `max_bytes` per attempt.
    pub fn new(state_dir: &Path, max_bytes: u64) -> LogStore {
        let (grew, _) = broadcast::channel(1024);
        LogStore {
            inner: Arc::new(Inner {
                root: state_dir.join("logs"),
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

    /// Writes one chunk where it belongs (blocking file I/O).
    pub fn write(&self, chunk: &LogChunk) -> Result<(), LogError> {
        check_worker_name(&chunk.worker)?;
        let dir = self.job_dir(chunk.run_id, chunk.job_id);
        let path = dir.join(format!("{}-{}.log", chunk.attempt, chunk.worker));
        let io = |err: std::io::Error| LogError::Io {
            path: path.clone(),
            reason: err.to_string(),
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io)?;
        let max = self.inner.max_bytes;
        let bytes = chunk.text.as_bytes();
        let keep = max.saturating_sub(chunk.offset).min(bytes.len() as u64) as usize;
        if keep > 0 {
            file.seek(SeekFrom::Start(chunk.offset)).map_err(io)?;
            file.write_all(&bytes[..keep]).map_err(io)?;
        }
        let cut = keep < bytes.len();
        if chunk.end || cut {
            let end = if cut || chunk.offset > max {
                "truncated"
            } else {
                "complete"
            };
            if chunk.end || !end_marker(&path).exists() {
                file.sync_data().map_err(io)?;
                // With the length the log will have: an end overtaking a redelivered earlier
                // chunk does not make a log with a hole read as complete.
                let length = (chunk.offset + bytes.len() as u64).min(max);
                std::fs::write(end_marker(&path), format!("{end} {length}")).map_err(io)?;
            }
        }
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
                let (attempt, worker) = name.split_once('-')?;
                let metadata = entry.metadata().ok()?;
                let marker = std::fs::read_to_string(end_marker(&path)).unwrap_or_default();
                let (state, length) = marker.split_once(' ').unwrap_or((marker.as_str(), "0"));
                let whole = length.parse::<u64>().is_ok_and(|l| metadata.len() >= l);
                let end = match state {
                    "complete" if whole => Some(LogEnd::Complete),
                    "truncated" if whole => Some(LogEnd::Truncated),
                    _ => None,
                };
                Some(LogFile {
                    attempt: attempt.parse().ok()?,
                    worker: worker.to_owned(),
                    len: metadata.len(),
                    modified: metadata.modified().ok(),
                    end,
                    path,
                })
            })
            .collect();
        logs.sort_by_key(|log| (log.attempt, log.modified));
        logs
    }

    /// Deletes the logs of runs not written to since `before` (blocking). Returns how many
    /// runs' logs went.
    pub fn prune(&self, before: SystemTime) -> usize {
        let Ok(runs) = std::fs::read_dir(&self.inner.root) else {
            return 0;
        };
        let mut pruned = 0;
        for run in runs.flatten() {
            let newest = newest_modification(&run.path());
            if newest.is_some_and(|newest| newest < before)
                && std::fs::remove_dir_all(run.path()).is_ok()
            {
                pruned += 1;
            }
        }
        pruned
    }
}

/// Up to `max` bytes of `path` from `offset`, cut back to whole UTF-8 characters (blocking).
/// Returns the text and the offset after it.
pub fn read_text(path: &Path, offset: u64, max: usize) -> std::io::Result<(String, u64)> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut buffer = Vec::with_capacity(max.min(1 << 20));
    file.take(max as u64).read_to_end(&mut buffer)?;
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

/// A worker's name becomes part of a file name: plain characters only.
fn check_worker_name(worker: &str) -> Result<(), LogError> {
    let plain = !worker.is_empty()
        && worker.len() <= 128
        && !worker.starts_with('.')
        && worker
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._@:-".contains(&b));
    if plain {
        Ok(())
    } else {
        Err(LogError::Invalid(format!(
            "a log chunk from worker {worker:?}, a name that cannot be part of a file name \
             (letters, digits and ._@:- only, at most 128)"
        )))
    }
}

fn newest_modification(dir: &Path) -> Option<SystemTime> {
    let mut newest = std::fs::metadata(dir).and_then(|m| m.modified()).ok();
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let modified = if entry.path().is_dir() {
            newest_modification(&entry.path())
        } else {
            entry.metadata().and_then(|m| m.modified()).ok()
        };
        newest = newest.max(modified);
    }
    newest
}

/// Takes log chunks from the broker and writes them, until the broker goes away. A chunk that
/// can never be written is dead-lettered with the reason; one the disk refused goes back to
/// the queue after a pause.
pub async fn consume(broker: Broker, logs: LogStore) -> Result<(), DispatchError> {
    let mut consumer = broker.consume(LOGS_QUEUE, PREFETCH).await?;
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery?;
        handle(&logs, delivery).await?;
    }
    Err(DispatchError::ConsumerClosed("logs"))
}

async fn handle(logs: &LogStore, delivery: Delivery) -> Result<(), DispatchError> {
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
    let written = tokio::task::spawn_blocking(move || store.write(&chunk).map(|()| chunk))
        .await
        .unwrap_or_else(|err| {
            Err(LogError::Io {
                path: PathBuf::new(),
                reason: err.to_string(),
            })
        });
    match written {
        Ok(_) => Ok(delivery.ack().await?),
        Err(LogError::Invalid(reason)) => {
            tracing::warn!(%reason, "Dead-lettering a log chunk.");
            Ok(delivery.dead_letter(&reason).await?)
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
            offset,
            text: text.into(),
            end,
        }
    }

    #[test]
    fn chunks_in_any_order_and_repeated_make_the_same_log() {
        let dir = tempfile::tempdir().unwrap();
        let logs = LogStore::new(dir.path(), 1 << 20);
        let mut grew = logs.subscribe();
        logs.write(&chunk(6, "world\n", false)).unwrap();
        logs.write(&chunk(0, "hello ", false)).unwrap();
        logs.write(&chunk(0, "hello ", false)).unwrap();
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
        logs.write(&chunk(12, "", true)).unwrap();
        let listed = logs.logs(Uuid::from_u128(1), Uuid::from_u128(2));
        assert_eq!(listed[0].end, None, "6 of 12 bytes: not complete yet");
        logs.write(&chunk(6, "world\n", false)).unwrap();
        let listed = logs.logs(Uuid::from_u128(1), Uuid::from_u128(2));
        assert_eq!(listed[0].end, Some(LogEnd::Complete));
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
}
