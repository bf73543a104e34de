//! A job's log, streamed to the dispatcher while the job runs: a task that follows the
//! attempt's log file (already redacted by [`crate::output`]) and publishes what is new as
//! [`LogChunk`]s, in order, each confirmed before the next.
//!
//! It reads the file rather than the tool's pipe so that it can never slow the job: the tool's
//! output goes to disk at full speed, and when the broker pushes back (the logs queue is full,
//! the dispatcher is behind) this task just falls behind, holding one chunk in memory, never
//! the backlog. When the job ends the rest is sent, then the end marker, within a grace period;
//! past it the dispatcher's copy stays cut, and the worker's own file is still whole.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use broker::{Broker, Headers, Outgoing, Route};
use proto_types::{Job, LogChunk, Payload};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

/// How long a finished job waits for its log to reach the broker before its outcome goes out
/// regardless (the outcome matters more than the copy of the log).
pub(crate) const FINISH_GRACE: Duration = Duration::from_secs(60);
/// When nothing says the file grew, look anyway this often (a write the notification missed
/// costs at most this much latency).
const IDLE_CHECK: Duration = Duration::from_millis(250);
/// A chunk that was not full is followed by the next one this much later at the earliest:
/// an idle log's first line goes out at once, a busy log in chunks of what 25 ms brought.
const MIN_INTERVAL: Duration = Duration::from_millis(25);
/// The first wait after a refused publish; it doubles up to [`RETRY_CAP`].
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_CAP: Duration = Duration::from_secs(2);

/// The streaming task of one attempt.
#[derive(Debug)]
pub(crate) struct LogStream {
    task: Option<JoinHandle<u64>>,
    done: watch::Sender<bool>,
    /// Poked by the job's output after every write to the file.
    pub(crate) written: Arc<Notify>,
}

impl LogStream {
    /// Starts following `path`, the log file of `job`'s attempt on `worker`.
    pub(crate) fn start(broker: Broker, job: &Job, worker: &str, path: PathBuf) -> LogStream {
        let written = Arc::new(Notify::new());
        let (done, done_rx) = watch::channel(false);
        let chunk = LogChunk {
            job_id: job.job_id,
            run_id: job.run_id,
            attempt: job.attempt,
            worker: worker.to_owned(),
            stream: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.as_millis() as u64),
            offset: 0,
            text: String::new(),
            end: false,
        };
        let task = tokio::spawn(follow(broker, chunk, path, written.clone(), done_rx));
        LogStream {
            task: Some(task),
            done,
            written,
        }
    }

    /// The job wrote its last byte: sends the rest and the end marker, waiting at most
    /// `grace`. Returns the bytes sent, or `None` when the grace period ran out first.
    pub(crate) async fn finish(mut self, grace: Duration) -> Option<u64> {
        let _ = self.done.send(true);
        let task = self.task.take()?;
        let abort = task.abort_handle();
        match tokio::time::timeout(grace, task).await {
            Ok(Ok(sent)) => Some(sent),
            Ok(Err(_)) => None,
            Err(_) => {
                abort.abort();
                None
            }
        }
    }
}

impl Drop for LogStream {
    /// A job abandoned on an error (the broker went away) stops its stream too.
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// The task: publish whatever the file holds past what was sent, until told the job is done
/// and everything is sent. Returns the bytes sent.
async fn follow(
    broker: Broker,
    mut chunk: LogChunk,
    path: PathBuf,
    written: Arc<Notify>,
    mut done: watch::Receiver<bool>,
) -> u64 {
    let mut file: Option<tokio::fs::File> = None;
    let mut buffer = vec![0_u8; LogChunk::MAX_BYTES];
    // Bytes read but not sent: the start of a character cut by the read.
    let mut held = 0_usize;
    // When the last chunk went out and whether it was full: a full one means a backlog, sent
    // at once; after a partial one the next waits [`MIN_INTERVAL`], so that a tool printing
    // line after line makes a few big chunks a second instead of one message per line.
    let mut last_sent: Option<(tokio::time::Instant, bool)> = None;
    loop {
        if let Some((at, false)) = last_sent
            && !*done.borrow()
        {
            let due = at + MIN_INTERVAL;
            tokio::select! {
                () = tokio::time::sleep_until(due) => {}
                _ = done.changed() => {}
            }
        }
        // Read `done` before the file: once it is set, the file holds everything.
        let finished = *done.borrow_and_update();
        if file.is_none() {
            file = tokio::fs::File::open(&path).await.ok();
        }
        let mut read = 0;
        if let Some(file) = &mut file {
            let at = chunk.offset + held as u64;
            if file.seek(std::io::SeekFrom::Start(at)).await.is_ok() {
                read = file.read(&mut buffer[held..]).await.unwrap_or(0);
            }
        }
        let available = held + read;
        let whole = match std::str::from_utf8(&buffer[..available]) {
            Ok(_) => available,
            // Whole characters only: a cut one waits for its last bytes...
            Err(err) => err.valid_up_to(),
        };
        // ...unless nothing more can come (the file is written from strings, so only a
        // damaged file ends inside a character).
        let cut = if whole == 0 && finished && read == 0 {
            available
        } else {
            whole
        };
        if cut > 0 {
            chunk.text = String::from_utf8_lossy(&buffer[..cut]).into_owned();
            publish(&broker, &chunk).await;
            last_sent = Some((tokio::time::Instant::now(), available == buffer.len()));
            chunk.offset += cut as u64;
            buffer.copy_within(cut..available, 0);
            held = available - cut;
            continue;
        }
        held = available;
        if read > 0 {
            continue;
        }
        if finished {
            chunk.text = String::new();
            chunk.end = true;
            publish(&broker, &chunk).await;
            return chunk.offset;
        }
        tokio::select! {
            () = written.notified() => {}
            _ = done.changed() => {}
            () = tokio::time::sleep(IDLE_CHECK) => {}
        }
    }
}

/// Publishes one chunk, waiting and sending again while the broker refuses it (a full logs
/// queue) or cannot be reached; the caller's grace period bounds the wait.
async fn publish(broker: &Broker, chunk: &LogChunk) {
    let body = chunk.encode();
    let id = format!(
        "{}-{}-{}-{}",
        chunk.job_id, chunk.attempt, chunk.worker, chunk.offset
    );
    let headers = Headers::new();
    let mut wait = RETRY_FIRST;
    loop {
        match broker
            .publish(Route::Logs, Outgoing::new(&body, &id, &headers))
            .await
        {
            Ok(()) => return,
            Err(err) => {
                tracing::debug!(error = %err, offset = chunk.offset, "A log chunk was not taken; sending it again.");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(RETRY_CAP);
            }
        }
    }
}
