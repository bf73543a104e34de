//! One delivery's life on a worker: claim the job from the dispatcher, run it with heartbeats,
//! obey a stop order, the job timeout and a shutdown's drain, then report and settle.
//!
//! The delivery is acked only after the outcome is confirmed by the broker. A job stopped by
//! a drain is given back (a `Released` event, then a requeue), so it is never lost.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use broker::{Broker, BrokerError, Consumer, Delivery, Headers, Outgoing, Route};
use proto_types::{
    ClaimVerdict, Job, JobEvent, JobEventKind, JobOutcome, JobStatus, Message, Payload,
};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;

use crate::logstream::{self, LogStream};
use crate::runner::{self, Stop};
use crate::workspace::Workspace;
use crate::{ExecuteError, WorkerSettings, checks, metrics, work};

/// How long a worker waits for the dispatcher to answer a claim before asking again.
const CLAIM_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest pause between claims while another worker's lease on the job runs out.
const MAX_CLAIM_RETRY_DELAY: Duration = Duration::from_secs(15);
/// Beyond the stop grace and the kill wait, how long a stopped job may take to end before the
/// worker stops heartbeating it.
const STOP_MARGIN: Duration = Duration::from_secs(30);

/// Attempts a worker remembers having reported.
const REPORTED_REMEMBERED: usize = 1024;

/// The job attempts this worker reported an outcome for, the latest
/// [`REPORTED_REMEMBERED`]. A second copy of a job exists when a dispatcher stopped between
/// publishing it and forgetting it in its outbox, and published it again. Should that copy
/// reach the worker that ran the first, its claim may reach the dispatcher before the first
/// copy's outcome does; the dispatcher then sees the holder asking again (its answer lost) and
/// grants it: the job would run twice, the second time after its unit was released to later
/// runs. The worker knows better: it drops the copy unrun.
#[derive(Debug, Default)]
pub(crate) struct Reported {
    order: VecDeque<(uuid::Uuid, u32)>,
    attempts: HashSet<(uuid::Uuid, u32)>,
}

impl Reported {
    fn insert(&mut self, attempt: (uuid::Uuid, u32)) {
        if self.attempts.insert(attempt) {
            self.order.push_back(attempt);
        }
        while self.order.len() > REPORTED_REMEMBERED {
            if let Some(oldest) = self.order.pop_front() {
                self.attempts.remove(&oldest);
            }
        }
    }

    fn contains(&self, attempt: (uuid::Uuid, u32)) -> bool {
        self.attempts.contains(&attempt)
    }
}

/// What a worker has to hand while it handles a delivery.
pub(crate) struct Worker<'a> {
    pub(crate) broker: &'a Broker,
    pub(crate) settings: &'a WorkerSettings,
    pub(crate) workspace: &'a Workspace,
    pub(crate) metrics: &'a telemetry::Metrics,
    /// The worker's log directory and what its logs may take.
    pub(crate) run_logs: &'a run_logs::SharedRunLogs,
    /// What it reported, so that it never runs an attempt twice.
    pub(crate) reported: &'a Mutex<Reported>,
}

/// A message on the worker's private queue.
enum Reply {
    Claim(proto_types::ClaimReply),
    Stop(proto_types::CancelJob),
    Other,
}

fn read_reply(delivery: &broker::Delivery) -> Reply {
    match proto_types::decode(&delivery.body) {
        Ok(Message::ClaimReply(reply)) => Reply::Claim(reply),
        Ok(Message::CancelJob(order)) => Reply::Stop(order),
        Ok(other) => {
            tracing::warn!(
                kind = other.kind(),
                "Unexpected message on the reply queue ignored."
            );
            Reply::Other
        }
        Err(err) => {
            tracing::warn!(error = %err, "Undecodable message on the reply queue ignored.");
            Reply::Other
        }
    }
}

impl Worker<'_> {
    fn has_reported(&self, job: &Job) -> bool {
        self.reported
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains((job.job_id, job.attempt))
    }

    fn remember_reported(&self, job: &Job) {
        self.reported
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((job.job_id, job.attempt));
    }

    /// Handles one delivery; whether a shutdown began meanwhile (the caller then stops taking
    /// jobs). `shutdown` must not have resolved yet.
    pub(crate) async fn handle<S: Future<Output = ()>>(
        &self,
        delivery: Delivery,
        replies: &mut Consumer,
        shutdown: &mut Pin<&mut S>,
    ) -> Result<bool, ExecuteError> {
        let job = match Job::decode(&delivery.body) {
            Ok(job) => job,
            Err(err) => {
                delivery
                    .dead_letter(&format!("undecodable job: {err}"))
                    .await?;
                self.metrics.inc(metrics::DEAD_LETTERS, &[]);
                return Ok(false);
            }
        };
        if job.account != self.settings.account {
            let reason = format!(
                "job for account {:?} on the queue of {:?}",
                job.account, self.settings.account
            );
            delivery.dead_letter(&reason).await?;
            self.metrics.inc(metrics::DEAD_LETTERS, &[]);
            return Ok(false);
        }
        let span = tracing::info_span!(
            "job",
            run_id = %job.run_id,
            job_id = %job.job_id,
            unit = %job.unit,
            account = %job.account,
            action = %job.action,
            attempt = job.attempt,
            repository = %job.repository,
        );
        // The job joins its run's trace.
        telemetry::propagation::set_parent(&span, &delivery.headers);
        self.handle_job(job, delivery, replies, shutdown)
            .instrument(span)
            .await
    }

    async fn handle_job<S: Future<Output = ()>>(
        &self,
        job: Job,
        delivery: Delivery,
        replies: &mut Consumer,
        shutdown: &mut Pin<&mut S>,
    ) -> Result<bool, ExecuteError> {
        // A second copy of an attempt this worker reported: not claimed (see `Reported`).
        if self.has_reported(&job) {
            tracing::info!(
                reason = "this worker ran this attempt and reported it already: a second copy",
                "Not running the job."
            );
            delivery.ack().await?;
            self.metrics.inc(metrics::NOT_RUN, &[]);
            return Ok(false);
        }
        // A job this worker must not run is still claimed, so that the dispatcher learns why
        // it failed (the job then fails with that reason, and nothing runs); one the dispatcher
        // does not know came from elsewhere, and is dead-lettered with the reason.
        let refusal = checks::check_job(&job, self.settings.identity()).err();
        let claimed = tokio::select! {
            claimed = self.claim(&job, replies, delivery.redelivered) => claimed?,
            () = shutdown.as_mut() => {
                // We may have been granted it already: give it back either way.
                self.give_back(&job, delivery, "the worker is shutting down").await?;
                return Ok(true);
            }
        };
        let lease = match claimed {
            Ok(lease) => lease,
            Err(reason) => {
                if let Some(refusal) = refusal {
                    tracing::warn!(%refusal, dispatcher = %reason, "Refusing a job the dispatcher does not know.");
                    let why = format!("refused by executor {}: {refusal}", self.settings.name);
                    delivery.dead_letter(&why).await?;
                    self.metrics.inc(metrics::DEAD_LETTERS, &[]);
                    return Ok(false);
                }
                // Finished, cancelled, or a second copy of a job someone else runs: drop it.
                tracing::info!(%reason, "Not running the job.");
                delivery.ack().await?;
                self.metrics.inc(metrics::NOT_RUN, &[]);
                return Ok(false);
            }
        };
        if delivery.is_last_chance() {
            return self.give_up(&job, delivery).await;
        }
        let (stop, stop_rx) = watch::channel(None::<Stop>);
        // Heartbeats well inside the lease, so one lost heartbeat costs nothing.
        let every = self
            .settings
            .heartbeat_interval
            .min(lease / 3)
            .max(Duration::from_secs(1));
        // Polled beside the work in this task rather than spawned: a task of its own cost a
        // spawn, an abort and the wake-ups of another thread on every job, most of which end
        // before their first heartbeat.
        let heartbeat = heartbeats(
            self.broker,
            &self.settings.name,
            &job,
            every,
            telemetry::propagation::current_headers(),
            stop_rx.clone(),
            self.settings.stop_grace + runner::KILL_WAIT + STOP_MARGIN,
        );
        tokio::pin!(heartbeat);
        let mut beating = true;
        let timeout = (job.timeout_secs > 0).then(|| Duration::from_secs(job.timeout_secs));
        let timeout_at = timeout.map(|limit| Instant::now() + limit);
        let mut drain_at: Option<Instant> = None;
        self.metrics.set(metrics::RUNNING, &[], 1.0);
        let _idle = Idle(self.metrics);
        // The log goes to the dispatcher as it is written (no-op jobs write none).
        let log_stream = (self.settings.stream_logs && job.action != proto_types::Action::Noop)
            .then(|| {
                LogStream::start(
                    self.broker.clone(),
                    &job,
                    &self.settings.name,
                    work::log_path(self.settings, &job),
                )
            });
        let written = log_stream.as_ref().map(|stream| stream.written.clone());
        let work = work::run(
            self.settings,
            self.workspace,
            self.run_logs,
            &job,
            stop_rx,
            written,
        );
        tokio::pin!(work);
        let finished = loop {
            tokio::select! {
                finished = &mut work => break finished,
                () = &mut heartbeat, if beating => beating = false,
                message = replies.next() => {
                    let Some(message) = message else {
                        return Err(ExecuteError::ConsumerClosed(replies.queue().to_owned()));
                    };
                    let message = message?;
                    let reply = read_reply(&message);
                    message.ack().await?;
                    if let Reply::Stop(order) = reply
                        && order.job_id == job.job_id
                        && order.attempt == job.attempt
                    {
                        tracing::info!(reason = %order.reason, "Stopping the job on the dispatcher's word.");
                        let _ = stop.send(Some(Stop::Cancel(order.reason)));
                    }
                }
                () = sleep_until(timeout_at) => {
                    let limit = timeout.unwrap_or_default();
                    tracing::warn!(timeout_s = limit.as_secs(), "The job timed out; stopping it.");
                    let _ = stop.send(Some(Stop::Timeout(limit)));
                }
                () = shutdown.as_mut(), if drain_at.is_none() => {
                    tracing::info!(drain_s = self.settings.drain.as_secs(), "Shutting down: the running job may finish first.");
                    drain_at = Some(Instant::now() + self.settings.drain);
                }
                () = sleep_until(drain_at) => {
                    tracing::warn!("The drain period is over; stopping the job and giving it back.");
                    let _ = stop.send(Some(Stop::Drain));
                }
            }
        };
        // The whole log reaches the broker before the outcome, so that a finished job's log
        // on the page is complete (unless the broker pushes back past the grace period).
        // Heartbeats go on meanwhile: a drain of up to the grace period must not cost the
        // lease, or another worker would take over a job that is done.
        if let Some(stream) = log_stream {
            let finish = stream.finish(logstream::FINISH_GRACE);
            tokio::pin!(finish);
            let finished = loop {
                tokio::select! {
                    finished = &mut finish => break finished,
                    () = &mut heartbeat, if beating => beating = false,
                }
            };
            if finished.is_none() {
                tracing::warn!(
                    grace_s = logstream::FINISH_GRACE.as_secs(),
                    "The job's log did not reach the broker in time; the dispatcher's copy stays cut (the worker's own file has it)."
                );
            }
        }
        // Not polled from here on: the heartbeats stop.
        let draining = drain_at.is_some();
        if finished.stopped == Some(Stop::Drain) {
            self.give_back(
                &job,
                delivery,
                "the worker shut down before the job finished",
            )
            .await?;
            self.metrics.inc(metrics::GIVEN_BACK, &[]);
            return Ok(true);
        }
        if let Some(Stop::Unclean { left }) = finished.stopped {
            self.give_back(
                &job,
                delivery,
                "processes of the worker's tool user outlived the kill",
            )
            .await?;
            self.metrics.inc(metrics::GIVEN_BACK, &[]);
            return Err(ExecuteError::ToolUserAlive(left));
        }
        let outcome = finished.outcome;
        let action = job.action.as_str();
        let status = format!("{:?}", outcome.status).to_ascii_lowercase();
        self.metrics
            .inc(metrics::JOBS, &[("action", action), ("status", &status)]);
        let seconds = outcome.duration_ms as f64 / 1000.0;
        self.metrics
            .observe(metrics::JOB_DURATION, &[("action", action)], seconds);
        tracing::info!(status = ?outcome.status, exit_code = ?outcome.exit_code, duration_ms = outcome.duration_ms, "Job finished.");
        // Ack only once the outcome is confirmed: if we die in between, the job is redelivered.
        publish_event(
            self.broker,
            &self.settings.name,
            &job,
            JobEventKind::Finished(outcome),
            None,
        )
        .await?;
        self.remember_reported(&job);
        delivery.ack().await?;
        if finished.tool_user_alive > 0 {
            return Err(ExecuteError::ToolUserAlive(finished.tool_user_alive));
        }
        Ok(draining)
    }

    /// Fails a job unrun on its message's last delivery. Every earlier delivery ended without a
    /// result: the workers that took it died (or gave it back). Run once more and ended the
    /// same way, the message would be dead-lettered by the broker itself, and the dispatcher,
    /// never told, would wait for the job for ever. Failed, the run ends and says why.
    async fn give_up(&self, job: &Job, delivery: Delivery) -> Result<bool, ExecuteError> {
        let deliveries = delivery.delivery_count.saturating_add(1);
        tracing::error!(
            deliveries,
            "Failing the job unrun: every earlier delivery of it ended without a result."
        );
        let outcome = JobOutcome {
            status: JobStatus::Failed,
            exit_code: None,
            resource_changes: None,
            output: format!(
                "Error: delivered {deliveries} times without a result (each worker that took it died or gave it back); not run again: check the workers' logs for crashes\n"
            ),
            duration_ms: 0,
            log: None,
            policy: None,
            drift: None,
        };
        publish_event(
            self.broker,
            &self.settings.name,
            job,
            JobEventKind::Finished(outcome),
            None,
        )
        .await?;
        self.remember_reported(job);
        delivery.ack().await?;
        self.metrics.inc(metrics::GIVEN_UP, &[]);
        Ok(false)
    }

    /// Tells the dispatcher the job is free again, then puts its message back on the queue.
    async fn give_back(
        &self,
        job: &Job,
        delivery: Delivery,
        reason: &str,
    ) -> Result<(), ExecuteError> {
        let released = JobEventKind::Released {
            reason: format!("{}: {reason}", self.settings.name),
        };
        publish_event(self.broker, &self.settings.name, job, released, None).await?;
        delivery.requeue().await?;
        tracing::info!(%reason, "Job given back to the queue.");
        Ok(())
    }

    /// Asks the dispatcher for the job until it answers yes (`Ok(lease)`) or no for good
    /// (`Err(reason)`). The dispatcher grants each attempt of a job to one worker at a time,
    /// so a duplicate or redelivered message never runs twice at once.
    async fn claim(
        &self,
        job: &Job,
        replies: &mut Consumer,
        redelivered: bool,
    ) -> Result<Result<Duration, String>, ExecuteError> {
        let mut retry_delay = Duration::from_secs(1);
        loop {
            let kind = JobEventKind::Started { redelivered };
            publish_event(
                self.broker,
                &self.settings.name,
                job,
                kind,
                Some(replies.queue()),
            )
            .await?;
            let deadline = Instant::now() + CLAIM_ANSWER_TIMEOUT;
            let answer = loop {
                let delivery = match tokio::time::timeout_at(deadline, replies.next()).await {
                    Err(_elapsed) => break None,
                    Ok(None) => {
                        return Err(ExecuteError::ConsumerClosed(replies.queue().to_owned()));
                    }
                    Ok(Some(delivery)) => delivery?,
                };
                let reply = read_reply(&delivery);
                delivery.ack().await?;
                match reply {
                    // Answers to earlier claims (asked again after a timeout) are not this one.
                    Reply::Claim(reply)
                        if reply.job_id == job.job_id && reply.attempt == job.attempt =>
                    {
                        break Some(reply.verdict);
                    }
                    Reply::Claim(_) | Reply::Stop(_) | Reply::Other => {}
                }
            };
            match answer {
                Some(ClaimVerdict::Granted { lease_secs }) => {
                    tracing::info!(lease_secs, "Job claimed.");
                    return Ok(Ok(Duration::from_secs(lease_secs.max(1))));
                }
                Some(ClaimVerdict::Denied {
                    reason,
                    retry: false,
                }) => return Ok(Err(reason)),
                Some(ClaimVerdict::Denied {
                    reason,
                    retry: true,
                }) => {
                    tracing::info!(%reason, retry_in_ms = retry_delay.as_millis() as u64, "Job held by another worker; asking again.");
                    tokio::time::sleep(retry_delay).await;
                    retry_delay = (retry_delay * 2).min(MAX_CLAIM_RETRY_DELAY);
                }
                None => {
                    tracing::warn!(
                        timeout_s = CLAIM_ANSWER_TIMEOUT.as_secs(),
                        "No answer to the claim; is the dispatcher running? Asking again."
                    );
                }
            }
        }
    }
}

/// Sets the running gauge back to zero however the job's handling ends.
struct Idle<'a>(&'a telemetry::Metrics);

impl Drop for Idle<'_> {
    fn drop(&mut self) {
        self.0.set(metrics::RUNNING, &[], 0.0);
    }
}

/// Resolves at `at`, or never.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Heartbeats until dropped, or until a stopped job has had `stop_limit` to end: a worker
/// stuck past that (a tool that ignores every signal, a hung disk) stops renewing its lease,
/// so that the dispatcher gives the job up rather than wait on it for ever.
async fn heartbeats(
    broker: &Broker,
    worker: &str,
    job: &Job,
    every: Duration,
    headers: Headers,
    mut stop: watch::Receiver<Option<Stop>>,
    stop_limit: Duration,
) {
    let mut interval = tokio::time::interval(every);
    interval.tick().await;
    let mut stop_deadline: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            changed = stop.changed(), if stop_deadline.is_none() => {
                if changed.is_err() || stop.borrow().is_some() {
                    stop_deadline = Some(Instant::now() + stop_limit);
                }
                continue;
            }
        }
        if stop_deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            tracing::error!(
                limit_s = stop_limit.as_secs(),
                "The stopped job did not end in time; no more heartbeats, its lease will lapse."
            );
            return;
        }
        let heartbeat = JobEventKind::Heartbeat;
        if let Err(err) = publish_with(broker, worker, job, heartbeat, None, &headers).await {
            tracing::warn!(error = %err, "Heartbeat not published.");
        }
    }
}

/// Publishes a job event in the current span's trace.
async fn publish_event(
    broker: &Broker,
    worker: &str,
    job: &Job,
    kind: JobEventKind,
    reply_to: Option<&str>,
) -> Result<(), BrokerError> {
    let headers = telemetry::propagation::current_headers();
    publish_with(broker, worker, job, kind, reply_to, &headers).await
}

async fn publish_with(
    broker: &Broker,
    worker: &str,
    job: &Job,
    kind: JobEventKind,
    reply_to: Option<&str>,
    headers: &Headers,
) -> Result<(), BrokerError> {
    let route = route_of(&kind);
    let event = JobEvent {
        job_id: job.job_id,
        run_id: job.run_id,
        attempt: job.attempt,
        worker: worker.to_owned(),
        kind,
    };
    let body = event.encode();
    let id = uuid::Uuid::new_v4().to_string();
    let message = Outgoing {
        reply_to,
        ..Outgoing::new(&body, &id, headers)
    };
    match route {
        // Asked again when unanswered: a publisher confirm would only add a frame and a wait.
        Route::Claims => broker.send_unconfirmed(&[(route, message)]).await,
        _ => broker.publish(route, message).await,
    }
}

/// Claims and heartbeats are requests this worker repeats when nothing comes back (a claim
/// after [`CLAIM_ANSWER_TIMEOUT`], a heartbeat at the next tick), so they take the transient
/// claims queue, without publisher confirms. What happened to a job (its outcome, a release)
/// must not be lost: durable, and confirmed before the job's delivery is acked.
fn route_of(kind: &JobEventKind) -> Route<'static> {
    match kind {
        JobEventKind::Started { .. } | JobEventKind::Heartbeat => Route::Claims,
        JobEventKind::Finished(_) | JobEventKind::Released { .. } => Route::JobEvents,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_remembers_the_latest_attempts_it_reported_and_only_those() {
        let mut reported = Reported::default();
        let job = uuid::Uuid::from_u128(1);
        reported.insert((job, 1));
        reported.insert((job, 1));
        assert!(reported.contains((job, 1)));
        assert!(!reported.contains((job, 2)), "a retry is a new attempt");
        for n in 0..REPORTED_REMEMBERED as u128 {
            reported.insert((uuid::Uuid::from_u128(100 + n), 1));
        }
        assert!(!reported.contains((job, 1)), "the oldest is forgotten");
        assert!(reported.contains((uuid::Uuid::from_u128(100), 1)));
        assert_eq!(reported.attempts.len(), REPORTED_REMEMBERED);
        assert_eq!(reported.order.len(), REPORTED_REMEMBERED);
    }
}
