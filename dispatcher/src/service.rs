//! The dispatcher's broker edge: take messages in batches, decode them, let the core decide
//! (`dispatcher_core::decide`), commit the decisions and their outbox in one transaction, then
//! answer claims, settle the deliveries, publish, and keep the metrics.
//!
//! The order is what makes a crash harmless: nothing is acked before its effect is committed,
//! and nothing committed is lost before it is published, because it waits in the outbox.

use std::future::Future;
use std::time::Duration;

use broker::topology::{CHANGES_QUEUE, CLAIMS_QUEUE, CONTROL_QUEUE, JOB_EVENTS_QUEUE};
use broker::{
    Broker, BrokerError, Consumer, Delivery, Headers, HeldAcks, Outgoing, Route, Topology,
};
use config::Config;
use futures_lite::future::poll_once;
use proto_types::untrusted_text::head;
use proto_types::{
    ApprovalOrder, ChangeEvent, JobEvent, JobEventKind, JobStatus, Message, Payload, RunState,
};
use uuid::Uuid;

use telemetry::Ops;

use dispatcher_core::decide::{Approver, Core, Decision, KnownJob, KnownRun, Outcome, Verdict};
use dispatcher_core::identity::Identity;
use dispatcher_core::scheduler::{Effects, Run};

use crate::change_intake::ChangeIntake;
use crate::clock::now_ms;
use crate::identity::Verifier;
use crate::leadership::LeaseClock;
use crate::logs::LogStore;
use crate::metrics;
use crate::reporter::Reporter;
use crate::store::{OutboxMessage, OutboxTarget, Store, StoreError, off_runtime};
use crate::web::{WebAction, WebAnswer, WebLink, WebOrder};

/// Messages handled per transaction at most: enough to amortize the commit, few enough that a
/// batch's acks are not held back for long.
const MAX_BATCH: usize = 256;
/// Outbox rows read at a time when publishing.
const OUTBOX_CHUNK: usize = 512;
/// The longest the load gauges lag behind the scheduler.
const LOAD_REFRESH_EVERY_MS: u64 = 250;

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// The broker failed under us: reconnect and start again from the database. Everything
    /// not yet acked is redelivered; everything committed is in the outbox.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The run database failed: stop without acking; the last committed state is intact.
    /// A lost PostgreSQL connection is transient (connect again); anything else exits.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The broker ended a consumer (it is shutting down, or the connection dropped): reconnect.
    #[error("the broker closed the {0} consumer")]
    ConsumerClosed(&'static str),
    /// Something the configuration asks for cannot be set up: fix it and restart.
    #[error("{0}")]
    Setup(String),
}

impl DispatchError {
    /// Whether reconnecting to the broker and starting again may help.
    pub fn is_transient(&self) -> bool {
        match self {
            DispatchError::Broker(err) => err.is_transient(),
            DispatchError::ConsumerClosed(_) => true,
            DispatchError::Store(err) => err.is_transient(),
            DispatchError::Setup(_) => false,
        }
    }
}

/// The most deliveries whose acks are held ([`HeldAcks`]): well under the prefetch of the
/// busy queues (512), so that holding them never stalls a consumer.
const ACKS_HELD_AT_MOST: usize = 64;
/// The longest an ack is held: the loop wakes up to send it when nothing else comes.
const ACKS_HELD_FOR_MS: u64 = 50;

/// The dispatcher's queues, in the order a batch drains them: outcomes and releases before
/// claims, so that a unit freed in a batch can be granted in the same batch.
#[derive(Debug, Clone, Copy)]
enum Source {
    JobEvents,
    Claims,
    Changes,
    Control,
}

impl Source {
    const ALL: [Source; 4] = [
        Source::JobEvents,
        Source::Claims,
        Source::Changes,
        Source::Control,
    ];

    fn queue(self) -> &'static str {
        match self {
            Source::JobEvents => JOB_EVENTS_QUEUE,
            Source::Claims => CLAIMS_QUEUE,
            Source::Changes => CHANGES_QUEUE,
            Source::Control => CONTROL_QUEUE,
        }
    }

    /// Unacked deliveries at most: job events and claims come in bursts, the others rarely
    /// (and change events one at a time: [`crate::change_intake::PREFETCH`]).
    fn prefetch(self) -> u16 {
        match self {
            Source::JobEvents | Source::Claims => 512,
            Source::Changes => crate::change_intake::PREFETCH,
            Source::Control => 16,
        }
    }

    /// Starts consuming this source's queue: change events on a connection of their own
    /// ([`ChangeIntake`]), the others on the broker's shared one.
    async fn consume(
        self,
        broker: &Broker,
        metrics: &telemetry::Metrics,
        config: &config::Config,
    ) -> Result<Feed, DispatchError> {
        Ok(match self {
            Source::Changes => {
                let verifier = match &config.dispatcher.oidc {
                    Some(oidc) => Some(
                        Verifier::new(oidc, config.timeouts.github())
                            .map_err(DispatchError::Setup)?,
                    ),
                    None => None,
                };
                Feed::Changes(ChangeIntake::start(broker, metrics.clone(), verifier).await?)
            }
            _ => Feed::Queue(broker.consume(self.queue(), self.prefetch()).await?),
        })
    }
}

/// Where a source's deliveries come from.
#[derive(Debug)]
enum Feed {
    Queue(Consumer),
    Changes(ChangeIntake),
}

impl Feed {
    /// The next delivery, with its identity token's verdict (change events only).
    async fn next(&mut self) -> Option<Result<(Delivery, Identity), BrokerError>> {
        match self {
            Feed::Queue(consumer) => Some(consumer.next().await?.map(|d| (d, Identity::Absent))),
            Feed::Changes(intake) => intake.next().await,
        }
    }
}

/// What a batch is made of: messages taken from the dispatcher's queues, and the actions of
/// the web page's signed-in users, handed over in process.
enum Incoming {
    Delivery {
        source: Source,
        delivery: Delivery,
        identity: Identity,
    },
    Web(WebOrder),
}

/// The dispatcher: policy, scheduler and run database, fed by the broker.
#[derive(Debug)]
pub struct Dispatcher {
    broker: Broker,
    /// The policy, the scheduler and the status pacing: every decision.
    core: Core,
    store: Store,
    ops: Ops,
    reporter: Option<Reporter>,
    /// Where the `[[drift]]` schedules keep their mirrors, and the run database they read;
    /// `None`: no schedule fires.
    drift_state_dir: Option<(std::path::PathBuf, crate::store::StoreLocation)>,
    /// When finished runs older than `dispatcher.retention_days` are next pruned.
    next_prune_ms: Option<u64>,
    /// When the load gauges (jobs in flight, waiting, awaiting approval) were last brought up
    /// to date, and whether a batch ran since ([`Dispatcher::refresh_load`]).
    load_refreshed_ms: u64,
    load_stale: bool,
    /// Where the workers' streamed logs are kept; `None`: the logs queue is not consumed.
    logs: Option<LogStore>,
    /// The web page, told about every change of every run.
    web: Option<WebLink>,
    /// Whether the outbox may hold messages: only this process's commits fill it, so it is
    /// read only after one that did (or at start, for what a crash left). Most batches (a
    /// claim, an outcome with nothing to start) write none, and reading an empty outbox after
    /// each cost a query and a hand-off of the runtime's thread.
    outbox_pending: bool,
    /// Acks of committed deliveries, held to go out together ([`ACKS_HELD_AT_MOST`],
    /// [`ACKS_HELD_FOR_MS`]), and since when the oldest is held.
    held_acks: HeldAcks,
    acks_held_since_ms: Option<u64>,
    /// The lead's end by this process's clock, when dispatchers share a database: past it,
    /// no batch is answered, acked or committed before the lease is renewed
    /// ([`Dispatcher::confirm_lead`]).
    lease: Option<LeaseClock>,
}

impl Dispatcher {
    /// Takes up the runs the store holds where the last dispatcher left them.
    pub fn new(broker: Broker, config: Config, store: Store) -> Result<Dispatcher, DispatchError> {
        let (runs, next_seq) = store.load_active()?;
        if !runs.is_empty() {
            let jobs: usize = runs.iter().map(|run| run.jobs.len()).sum();
            tracing::info!(runs = runs.len(), jobs, "Restored the active runs.");
        }
        Ok(Dispatcher {
            broker,
            next_prune_ms: (config.dispatcher.retention_days > 0).then(now_ms),
            core: Core::restore(config, runs, next_seq, now_ms()),
            load_refreshed_ms: 0,
            load_stale: true,
            held_acks: HeldAcks::default(),
            acks_held_since_ms: None,
            store,
            ops: Ops::default(),
            reporter: None,
            drift_state_dir: None,
            logs: None,
            web: None,
            outbox_pending: true,
            lease: None,
        })
    }

    /// Answers nothing once `lease` ran out unless it renews it first: a leader paused past
    /// it (SIGSTOP, a stalled VM) may have been replaced, and what it would answer from memory
    /// (an "unknown" job the new leader published, a stale attempt) would make workers drop
    /// jobs. Replaced, it steps down.
    pub fn with_lease(mut self, lease: LeaseClock) -> Dispatcher {
        self.lease = Some(lease);
        self
    }

    /// Tells `reporter` about every change of every run.
    pub fn with_reporter(mut self, reporter: Reporter) -> Dispatcher {
        self.reporter = Some(reporter);
        self
    }

    /// Fires the `[[drift]]` schedules while running, with their mirrors in `state_dir`;
    /// `store` says when the last drift run was.
    pub fn with_drift_schedules(
        mut self,
        state_dir: std::path::PathBuf,
        store: crate::store::StoreLocation,
    ) -> Dispatcher {
        self.drift_state_dir = Some((state_dir, store));
        self
    }

    /// Keeps the logs the workers stream (`pipelines.logs`) in `logs`.
    pub fn with_logs(mut self, logs: LogStore) -> Dispatcher {
        self.logs = Some(logs);
        self
    }

    /// Tells the web page about every change of every run, and lends it the broker for the
    /// actions of its users.
    pub fn with_web(mut self, link: WebLink) -> Dispatcher {
        self.web = Some(link);
        self
    }

    /// Where to keep metrics and readiness (served by the binary).
    pub fn with_ops(mut self, ops: Ops) -> Dispatcher {
        self.ops = ops;
        self
    }

    /// Declares the topology, then handles messages until `shutdown` resolves.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), DispatchError> {
        let topology = Topology::new(self.core.config().account_names());
        self.broker.ensure_topology(&topology).await?;
        // The claims queue lives on one node: in a cluster that lost it, it is declared here
        // again (a least-privilege deployment allows the dispatcher that much).
        match self.broker.declare_transient_queues(&topology).await {
            Err(BrokerError::Refused { reason, .. }) => {
                tracing::warn!(%reason, "Cannot declare the claims queue: if the broker's node that held it goes, claims go nowhere until it is back. Re-import the definitions (`pipelines broker definitions`).")
            }
            other => other?,
        }
        // Whatever a crash left committed but unpublished goes out first; then whatever the
        // restored runs may start now (retries that came due while we were down).
        self.publish_outbox().await?;
        let effects = self.core.decide_tick(now_ms());
        self.commit(&effects, &[], now_ms())?;
        self.publish_outbox().await?;

        metrics::register(&self.ops.metrics);
        let config = self.core.config();
        let consume = |source: Source| source.consume(&self.broker, &self.ops.metrics, config);
        let mut consumers = [
            consume(Source::JobEvents).await?,
            consume(Source::Claims).await?,
            consume(Source::Changes).await?,
            consume(Source::Control).await?,
        ];
        self.refresh_drift_metrics();
        let store = &self.store;
        match off_runtime(|| store.drift_runs_ended()) {
            Ok(ended) => {
                for (repository, ms) in ended {
                    self.ops.metrics.set(
                        metrics::DRIFT_LAST_RUN,
                        &[("repository", repository.as_str())],
                        ms as f64 / 1000.0,
                    );
                }
            }
            Err(err) => tracing::warn!(error = %err, "Cannot read when the last drift runs ended."),
        }
        let depths = tokio::spawn(watch_queue_depths(
            self.broker.clone(),
            Topology::new(self.core.config().account_names()),
            self.ops.metrics.clone(),
        ));
        let _stop_depths = AbortOnDrop(depths);
        // Logs have their own consumer: a burst of output never delays a decision.
        let mut log_consumer = self.logs.clone().map(|logs| {
            AbortOnDrop(tokio::spawn(crate::logs::consume(
                self.broker.clone(),
                logs,
                self.core.config().dispatcher.clone(),
            )))
        });
        let log_days = self.core.config().dispatcher.log_retention_days;
        let _prune_logs = self
            .logs
            .clone()
            .filter(|_| log_days > 0)
            .map(|logs| AbortOnDrop(tokio::spawn(crate::logs::prune_by_age(logs, log_days))));
        // The page's actions come to this loop, in process, while it runs: no broker user
        // can speak for the page's users.
        let mut web_orders = match &self.web {
            Some(web) => Some(web.take_orders().await),
            None => None,
        };
        let _stop_schedules = self.drift_state_dir.clone().map(|(state_dir, store)| {
            AbortOnDrop(tokio::spawn(crate::schedule::run(
                self.broker.clone(),
                self.core.config().clone(),
                state_dir,
                store,
            )))
        });
        self.ops.health.set_ready(true);
        // In process (embedded mode) no message has a user, so there is nothing to check.
        let senders_known = self.broker.carries_users();
        if senders_known && self.core.config().dispatcher.orchestrator_users.is_empty() {
            tracing::warn!(
                "Change events are accepted from any broker user; set dispatcher.orchestrator_users to the orchestrators' users."
            );
        }
        let settings = &self.core.config().dispatcher;
        if senders_known
            && !settings.orchestrator_users.is_empty()
            && settings.deploy_orchestrator_users.is_empty()
        {
            tracing::warn!(
                "Push and drift events are accepted from every orchestrator user: a pull request's CI holding that login can ask to apply an older commit of the deploy branch again; set dispatcher.deploy_orchestrator_users to the deploy workflow's user (see SECURITY.md)."
            );
        }
        if senders_known && self.core.config().dispatcher.executor_users.is_none() {
            tracing::warn!(
                "Job events and log chunks are accepted from any executor's broker user, for any account and role; set dispatcher.executor_users (see SECURITY.md)."
            );
        }
        tracing::info!(accounts = ?self.core.config().account_names(), "Dispatcher ready.");
        tokio::pin!(shutdown);
        loop {
            let now = now_ms();
            self.prune_if_due(now)?;
            let load_due = self
                .load_stale
                .then_some(self.load_refreshed_ms + LOAD_REFRESH_EVERY_MS);
            let acks_due = self
                .acks_held_since_ms
                .map(|since| since + ACKS_HELD_FOR_MS);
            let wakeup = [
                self.core.next_wakeup(now),
                self.next_prune_ms,
                load_due,
                acks_due,
            ]
            .into_iter()
            .flatten()
            .min();
            let timer = async move {
                match wakeup {
                    Some(at) => {
                        let wait = at.saturating_sub(now_ms());
                        tokio::time::sleep(Duration::from_millis(wait)).await;
                    }
                    None => std::future::pending().await,
                }
            };
            let mut batch = Vec::new();
            let logs_ended = async {
                match &mut log_consumer {
                    Some(AbortOnDrop(task)) => task.await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = &mut shutdown => {
                    tracing::info!("Dispatcher shutting down.");
                    // An ack that cannot go now is a redelivery to the next dispatcher, which
                    // takes it as a repeat: no reason to fail the shutdown.
                    if let Err(err) = self.held_acks.release() {
                        tracing::warn!(error = %err, "Held acks not sent; their messages will be redelivered.");
                    }
                    return Ok(());
                }
                incoming = next(&mut consumers) => batch.push(incoming?),
                Some(order) = next_web_order(&mut web_orders) => batch.push(Incoming::Web(order)),
                ended = logs_ended => {
                    return Err(match ended {
                        Ok(Err(err)) => err,
                        _ => DispatchError::ConsumerClosed("logs"),
                    });
                }
                () = timer => {}
            }
            drain(&mut consumers, &mut batch).await?;
            self.handle(batch).await?;
        }
    }

    /// Brings the load gauges up to date when a batch ran since the last update and that is
    /// [`LOAD_REFRESH_EVERY_MS`] old: counting the waiting jobs walks every active job, which
    /// after every batch of a 5,000-job run was 3% of the dispatcher's time. The loop wakes up
    /// for a due refresh, so the gauges are never staler than that.
    fn refresh_load(&mut self, now: u64) {
        if !self.load_stale || now < self.load_refreshed_ms + LOAD_REFRESH_EVERY_MS {
            return;
        }
        let scheduler = self.core.scheduler();
        metrics::load(
            &self.ops.metrics,
            scheduler.in_flight(),
            scheduler.waiting(),
            scheduler.awaiting_approval(),
        );
        self.load_refreshed_ms = now;
        self.load_stale = false;
    }

    /// Forgets finished runs past `dispatcher.retention_days`, at start and hourly. (Job logs
    /// past `dispatcher.log_retention_days` go in [`crate::logs::prune_by_age`].)
    fn prune_if_due(&mut self, now: u64) -> Result<(), DispatchError> {
        let Some(due) = self.next_prune_ms else {
            return Ok(());
        };
        if now < due {
            return Ok(());
        }
        let retention_days = self.core.config().dispatcher.retention_days;
        let keep_ms = retention_days.saturating_mul(24 * 3600 * 1000);
        let store = &mut self.store;
        let pruned = off_runtime(|| store.prune_finished(now.saturating_sub(keep_ms)))?;
        if pruned > 0 {
            tracing::info!(
                runs = pruned,
                retention_days = self.core.config().dispatcher.retention_days,
                "Pruned finished runs."
            );
        }
        self.next_prune_ms = Some(now + PRUNE_EVERY_MS);
        Ok(())
    }

    /// Decode → decide → commit (one transaction) → answer, settle, publish → metrics.
    async fn handle(&mut self, batch: Vec<Incoming>) -> Result<(), DispatchError> {
        let now = now_ms();
        let mut effects = Effects::default();
        let mut settle = Vec::with_capacity(batch.len());
        let mut replies = Vec::new();
        let mut outputs = Vec::new();
        let mut web_answers = Vec::new();
        for incoming in batch {
            let (source, delivery, identity) = match incoming {
                Incoming::Delivery {
                    source,
                    delivery,
                    identity,
                } => (source, delivery, identity),
                Incoming::Web(order) => {
                    let decision = self.on_web_order(&order, now)?;
                    effects.merge(decision.effects);
                    web_answers.push((order, WebAnswer::of(decision.outcome.as_ref())));
                    continue;
                }
            };
            let decision = match source {
                Source::Changes => self.on_change_event(&delivery, &identity, now)?,
                Source::JobEvents | Source::Claims => self.on_job_event(&delivery, now)?,
                Source::Control => self.on_control(&delivery, now)?,
            };
            effects.merge(decision.effects);
            replies.extend(decision.reply);
            outputs.extend(decision.output);
            settle.push((source, delivery, decision.verdict));
        }
        effects.merge(self.core.decide_tick(now));
        // Before anything of the batch leaves: its commit (a write is fenced, but a batch of
        // refusals writes nothing), its answers and its acks.
        self.confirm_lead()?;
        self.commit(&effects, &outputs, now)?;
        // Answers and stop orders go straight to workers' private queues (a worker that is
        // gone needs neither, so they are not kept in the outbox), without publisher
        // confirms: a worker asks again when no answer comes, and a gone reply queue drops
        // the message whether or not the broker confirms it.
        let headers = Headers::new();
        let answers = replies.iter().map(|(queue, reply)| (queue, reply.encode()));
        let stops = effects
            .stop
            .iter()
            .map(|(queue, order)| (queue, order.encode()));
        let bodies: Vec<(&String, Vec<u8>, String)> = answers
            .chain(stops)
            .map(|(queue, body)| (queue, body, Uuid::new_v4().to_string()))
            .collect();
        let messages: Vec<(Route<'_>, Outgoing<'_>)> = bodies
            .iter()
            .map(|(queue, body, id)| (Route::Reply { queue }, Outgoing::new(body, id, &headers)))
            .collect();
        // Dead letters first: the acks below settle every delivery up to each consumer's last.
        // Change events are settled at once (one is delivered at a time), and a settle that
        // fails there is their own connection's failure, which their intake mends: the
        // message comes again and is taken as the repeat it is.
        let mut acks = Vec::with_capacity(settle.len());
        for (source, delivery, verdict) in settle {
            let settled = match verdict {
                Verdict::Ack if !matches!(source, Source::Changes) => {
                    acks.push(delivery);
                    continue;
                }
                Verdict::Ack => delivery.ack().await,
                Verdict::DeadLetter(reason) => {
                    let dead = delivery.dead_letter(&reason).await;
                    if dead.is_ok() {
                        self.ops.metrics.inc(metrics::DEAD_LETTERS, &[]);
                    }
                    dead
                }
            };
            match (settled, source) {
                (Err(err), Source::Changes) => {
                    tracing::warn!(error = %err, "A change event's settle failed with its connection; it will come again.");
                }
                (settled, _) => settled?,
            }
        }
        // Committed: the acks may go, but are held to go out with later batches' (one settle
        // for many: RabbitMQ spent 9% less CPU per no-op job, BENCHMARKS.md). A crash before they
        // go redelivers what was committed, which the handlers take as the repeat it is.
        self.held_acks.hold(acks)?;
        if !self.held_acks.is_empty() {
            let since = *self.acks_held_since_ms.get_or_insert(now);
            if self.held_acks.len() >= ACKS_HELD_AT_MOST || now >= since + ACKS_HELD_FOR_MS {
                self.held_acks.release()?;
                self.acks_held_since_ms = None;
            }
        }
        self.broker.send_unconfirmed(&messages).await?;
        self.load_stale = true;
        self.refresh_load(now);
        self.publish_outbox().await?;
        // Committed (a crash from here on loses nothing the page was told).
        for (order, answer) in web_answers {
            order.answer(answer);
        }
        self.core.evict_finished();
        Ok(())
    }

    /// A signed-in user's action from the web page, decided like a control message, with the
    /// page's user as the authority the core checks against `[web]`.
    fn on_web_order(&mut self, order: &WebOrder, now: u64) -> Result<Decision, DispatchError> {
        let span = tracing::info_span!(
            "web_order",
            run_id = %order.run_id,
            user = %order.user,
            action = order.action.as_str(),
        );
        let _entered = span.enter();
        let known = self.known_run(order.run_id)?;
        let decision = match &order.action {
            WebAction::Cancel => {
                self.core
                    .decide_web_cancel(order.run_id, &order.user, &order.reason, known, now)
            }
            WebAction::Approval { verdict, chosen } => {
                let approval = ApprovalOrder {
                    run_id: order.run_id,
                    unit: None,
                    verdict: *verdict,
                    reason: order.reason.clone(),
                    requested_by: crate::web::web_requester(&order.user),
                };
                let approver = Approver::Web {
                    user: &order.user,
                    chosen,
                };
                let decision = self.core.decide_approval(&approval, approver, known, now);
                self.count_approval(&approval, &decision);
                decision
            }
        };
        log(decision.outcome.as_ref());
        Ok(decision)
    }

    fn count_approval(&self, order: &ApprovalOrder, decision: &Decision) {
        let result = match &decision.outcome {
            Some(Outcome::ApprovalApplied { .. }) => "applied",
            Some(Outcome::ApproverRefused { .. }) => "refused",
            _ => "matched-nothing",
        };
        self.ops.metrics.inc(
            metrics::APPROVAL_ORDERS,
            &[("verdict", order.verdict.as_str()), ("result", result)],
        );
    }

    /// An operator's order: cancel a run, or approve or reject its gated jobs.
    fn on_control(&mut self, delivery: &Delivery, now: u64) -> Result<Decision, DispatchError> {
        let order = match proto_types::decode(&delivery.body) {
            Ok(Message::CancelRun(order)) => order,
            Ok(Message::ApprovalOrder(order)) => return self.on_approval(&order, delivery, now),
            Ok(other) => {
                return Ok(dead_letter(format!(
                    "a {} message on the control queue, which takes CancelRun and ApprovalOrder",
                    other.kind()
                )));
            }
            Err(err) => return Ok(dead_letter(format!("undecodable control message: {err}"))),
        };
        let span = tracing::info_span!("cancel", run_id = %order.run_id, requested_by = %order.requested_by);
        telemetry::propagation::set_parent(&span, &delivery.headers);
        let _entered = span.enter();
        let known = self.known_run(order.run_id)?;
        let decision = self.core.decide_control(&order, known, now);
        log(decision.outcome.as_ref());
        Ok(decision)
    }

    fn on_approval(
        &mut self,
        order: &ApprovalOrder,
        delivery: &Delivery,
        now: u64,
    ) -> Result<Decision, DispatchError> {
        let span = tracing::info_span!(
            "approval",
            run_id = %order.run_id,
            unit = order.unit.as_deref().unwrap_or("*"),
            verdict = order.verdict.as_str(),
            user = delivery.user_id.as_deref().unwrap_or("?"),
            requested_by = %order.requested_by,
        );
        telemetry::propagation::set_parent(&span, &delivery.headers);
        let _entered = span.enter();
        let known = self.known_run(order.run_id)?;
        let approver = Approver::Broker(delivery.user_id.as_deref());
        let decision = self.core.decide_approval(order, approver, known, now);
        self.count_approval(order, &decision);
        log(decision.outcome.as_ref());
        Ok(decision)
    }

    fn on_change_event(
        &mut self,
        delivery: &Delivery,
        identity: &Identity,
        now: u64,
    ) -> Result<Decision, DispatchError> {
        let event = match ChangeEvent::decode(&delivery.body) {
            Ok(event) => event,
            Err(err) => return Ok(dead_letter(format!("undecodable change event: {err}"))),
        };
        // The run's trace: continued from the orchestrator, carried on by every job.
        // The repository is the sender's word until the policy checks it: quoted, and cut.
        let span = tracing::info_span!("dispatch", run_id = %event.id, repository = ?head(&event.repository, 256), event = %event.trigger.kind());
        telemetry::propagation::set_parent(&span, &delivery.headers);
        let _entered = span.enter();
        let known = self.known_run(event.id)?;
        let decision =
            self.core
                .decide_change(&event, delivery.user_id.as_deref(), identity, known, now);
        if matches!(
            decision.outcome,
            Some(Outcome::RunAccepted { .. } | Outcome::RunRejected { .. })
        ) {
            self.core
                .set_trace(event.id, telemetry::propagation::traceparent(&span));
        }
        log(decision.outcome.as_ref());
        Ok(decision)
    }

    fn on_job_event(&mut self, delivery: &Delivery, now: u64) -> Result<Decision, DispatchError> {
        let event = match JobEvent::decode(&delivery.body) {
            Ok(event) => event,
            Err(err) => return Ok(dead_letter(format!("undecodable job event: {err}"))),
        };
        let active = self.core.job(event.job_id);
        let (unit, account) = active.map_or((None, None), |(_, job)| {
            (Some(job.job.unit.clone()), Some(job.job.account.clone()))
        });
        let span = tracing::info_span!(
            "job_event",
            run_id = %event.run_id,
            job_id = %event.job_id,
            attempt = event.attempt,
            // The sender's word: quoted, and cut (one too long is refused below).
            worker = ?head(&event.worker, 256),
            unit = unit.as_deref().unwrap_or("?"),
            account = account.as_deref().unwrap_or("?"),
        );
        telemetry::propagation::set_parent(&span, &delivery.headers);
        let _entered = span.enter();
        // Only a claim or an outcome for a job no longer active needs the database.
        let needs_store = matches!(
            event.kind,
            JobEventKind::Started { .. } | JobEventKind::Finished(_)
        );
        let known = if active.is_none() && needs_store {
            let store = &self.store;
            off_runtime(|| store.job_state(event.job_id))?.map(|state| KnownJob { state })
        } else {
            None
        };
        let decision = self.core.decide_job_event(
            &event,
            delivery.reply_to.as_deref(),
            delivery.user_id.as_deref(),
            known,
            now,
        );
        if let Some(Outcome::JobReported {
            action,
            finished: Some(state),
            duration_ms,
            ..
        }) = &decision.outcome
        {
            metrics::job_finished(
                &self.ops.metrics,
                action.as_str(),
                state.as_str(),
                Some(*duration_ms),
            );
        }
        log(decision.outcome.as_ref());
        Ok(decision)
    }

    /// Whether this dispatcher may still answer, when dispatchers share a database: by its
    /// own clock of the lease, or, when that ran out (a pause, slow renewals), by renewing the
    /// lease itself, which fails when another dispatcher took it meanwhile.
    fn confirm_lead(&self) -> Result<(), StoreError> {
        let Some(lease) = &self.lease else {
            return Ok(());
        };
        if lease.running() {
            return Ok(());
        }
        let asked = std::time::Instant::now();
        let store = &self.store;
        let still = off_runtime(|| store.renew_lead(&lease.holder, lease.term, lease.lease_ms()))?;
        if !still {
            return Err(StoreError::LeaseLapsed { term: lease.term });
        }
        tracing::info!(
            term = lease.term,
            "The lease had run out by this dispatcher's clock; renewed it before answering."
        );
        lease.renewed(asked);
        Ok(())
    }

    /// The store's answer for a run the core no longer holds (final, or never seen).
    fn known_run(&self, run_id: Uuid) -> Result<Option<KnownRun>, DispatchError> {
        if self.core.is_active_run(run_id) {
            return Ok(None);
        }
        let store = &self.store;
        Ok(off_runtime(|| store.known_run(run_id))?)
    }

    /// Applies what the core decided for a batch, in one transaction: changed runs and jobs,
    /// the jobs to publish and the status snapshots due (the outbox), and kept outputs.
    fn commit(
        &mut self,
        effects: &Effects,
        outputs: &[(Uuid, String)],
        now: u64,
    ) -> Result<(), StoreError> {
        let persist = self.core.persist(effects, now);
        if persist.is_empty() && effects.publish.is_empty() && outputs.is_empty() {
            return Ok(());
        }
        let core = &self.core;
        let runs: Vec<(&Run, &RunState)> = persist
            .runs
            .iter()
            .filter_map(|(id, state)| Some((core.run(*id)?, state)))
            .collect();
        let jobs: Vec<_> = persist
            .jobs
            .iter()
            .filter_map(|id| core.job_at(*id))
            .collect();
        let trace_of =
            |job: &proto_types::Job| core.run(job.run_id).and_then(|run| run.trace.clone());
        let mut outbox: Vec<OutboxMessage> = effects
            .publish
            .iter()
            .map(|job| OutboxMessage::job(job, trace_of(job)))
            .collect();
        outbox.extend(
            persist
                .statuses
                .iter()
                .filter_map(|id| core.run(*id))
                .map(OutboxMessage::status),
        );
        let store = &mut self.store;
        off_runtime(|| store.commit(runs.iter().copied(), jobs, &outbox, outputs, now))?;
        self.outbox_pending |= !outbox.is_empty();
        for job in &effects.publish {
            tracing::info!(run_id = %job.run_id, job_id = %job.job_id, unit = %job.unit, account = %job.account, action = %job.action, attempt = job.attempt, "Job queued.");
            if job.attempt > 1 {
                self.ops
                    .metrics
                    .inc(metrics::RETRIES, &[("action", job.action.as_str())]);
            }
        }
        let mut drift_ended = Vec::new();
        for (run, state) in runs {
            if let Some(reporter) = &self.reporter {
                reporter.changed(run.run_id);
            }
            if let Some(web) = &self.web {
                web.run_changed(run.run_id);
            }
            if state.is_final() {
                finished(run, state, now);
                let labels = [("event", run.event.as_str()), ("state", state.as_str())];
                self.ops.metrics.inc(metrics::RUNS_FINISHED, &labels);
                if run.event == proto_types::EventKind::Drift {
                    drift_ended.push(run.repository.clone());
                }
            }
        }
        for repository in drift_ended {
            self.ops.metrics.set(
                metrics::DRIFT_LAST_RUN,
                &[("repository", repository.as_str())],
                now as f64 / 1000.0,
            );
            self.refresh_drift_metrics();
        }
        Ok(())
    }

    /// The drift gauges, from every unit's last finding in the store. A finding that cannot
    /// be read leaves the gauges as they were: they are a view, not the state.
    fn refresh_drift_metrics(&self) {
        let store = &self.store;
        match off_runtime(|| store.drift_units(None)) {
            Ok(units) => metrics::drift(&self.ops.metrics, &units),
            Err(err) => {
                tracing::warn!(error = %err, "Cannot read the drift findings for the gauges.")
            }
        }
    }

    /// Publishes the outbox with confirms, forgetting each message once confirmed.
    async fn publish_outbox(&mut self) -> Result<(), DispatchError> {
        while self.outbox_pending {
            let store = &self.store;
            let messages = off_runtime(|| store.outbox(OUTBOX_CHUNK))?;
            if messages.is_empty() {
                // Nothing to forget either: no write transaction for it.
                self.outbox_pending = false;
                break;
            }
            // Each message continues its run's trace.
            let headers: Vec<Headers> = messages
                .iter()
                .map(|message| telemetry::propagation::headers_from(message.trace.as_deref()))
                .collect();
            let outgoing: Vec<(Route<'_>, Outgoing<'_>)> = messages
                .iter()
                .zip(&headers)
                .map(|(message, headers)| {
                    let route = match &message.target {
                        OutboxTarget::Jobs { account, role } => Route::Jobs {
                            account,
                            role: *role,
                        },
                        OutboxTarget::Status { run_id } => Route::Status { run_id: *run_id },
                    };
                    (
                        route,
                        Outgoing::new(&message.body, &message.message_id, headers),
                    )
                })
                .collect();
            // All sent before any confirm is awaited. On an error nothing is deleted: the lot
            // goes out again on the next start, and consumers drop what they have seen (ids).
            self.broker.publish_all(&outgoing).await?;
            let published: Vec<i64> = messages.iter().map(|message| message.id).collect();
            let store = &mut self.store;
            off_runtime(|| store.delete_outbox(&published))?;
            self.outbox_pending = messages.len() >= OUTBOX_CHUNK;
        }
        Ok(())
    }
}

/// Reads the depth of every work queue into the metrics, every 15 seconds.
async fn watch_queue_depths(broker: Broker, topology: Topology, metrics: telemetry::Metrics) {
    let mut every = tokio::time::interval(Duration::from_secs(15));
    loop {
        every.tick().await;
        for queue in topology.work_queues() {
            if let Ok(depth) = broker.queue_depth(&queue.name).await {
                metrics.set(
                    metrics::QUEUE_DEPTH,
                    &[("queue", &queue.name)],
                    f64::from(depth),
                );
            }
        }
    }
}

/// Aborts a background task when its owner goes away.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A message that cannot be decoded: dead-lettered, nothing decided.
fn dead_letter(reason: String) -> Decision {
    Decision {
        verdict: Verdict::DeadLetter(reason),
        ..Decision::default()
    }
}

/// The log line of a decision, inside its message's span.
fn log(outcome: Option<&Outcome>) {
    let Some(outcome) = outcome else { return };
    match outcome {
        Outcome::RunAccepted { jobs } => tracing::info!(jobs, "Run accepted."),
        Outcome::RunRejected { reason } => tracing::warn!(%reason, "Change event rejected."),
        Outcome::SubmitterRefused { user } => {
            tracing::warn!(user, "Change event from a user that may not submit runs.");
        }
        Outcome::EventRedelivered => {
            tracing::info!("Change event redelivered; its run exists already.");
        }
        Outcome::ClaimGranted { redelivered } => tracing::info!(redelivered, "Job started."),
        Outcome::ClaimDenied { reason, retry } => tracing::info!(%reason, retry, "Claim denied."),
        Outcome::ClaimWithoutReplyQueue => tracing::warn!("Claim without a valid reply queue."),
        Outcome::JobEventSenderRefused { user, expected } => tracing::warn!(
            user,
            expected,
            "Job event from a broker user that is not the job's executor user: refused."
        ),
        Outcome::HeartbeatRenewed => {}
        Outcome::HeartbeatIgnored => {
            tracing::debug!("Heartbeat from a worker that does not hold the job.");
        }
        Outcome::Released { reason } => tracing::info!(?reason, "Job given back by its worker."),
        Outcome::JobReported {
            status,
            exit_code,
            duration_ms,
            ..
        } => match status {
            JobStatus::Succeeded => tracing::info!(duration_ms, "Job succeeded."),
            JobStatus::Failed => tracing::warn!(exit_code = ?exit_code, "Job failed."),
            JobStatus::Refused => tracing::warn!("Job refused by its worker."),
            JobStatus::Cancelled => tracing::info!("Job stopped."),
        },
        Outcome::StaleReport => {
            tracing::info!("Report of a stale attempt or a former holder ignored.");
        }
        Outcome::LateReport => tracing::info!("Late report for a finished job ignored."),
        Outcome::UnknownJob => tracing::warn!("Job event for a job this dispatcher does not know."),
        Outcome::OversizedJobEvent => {
            tracing::warn!("Job event larger than any executor sends: refused.");
        }
        Outcome::CancelRequested { reason } => tracing::info!(%reason, "Cancelling the run."),
        Outcome::CancelOfEndedRun => {
            tracing::info!("Cancellation of a run that already ended ignored.");
        }
        Outcome::CancelOfUnknownRun => tracing::warn!("Cancellation of an unknown run."),
        Outcome::ApproverRefused { user } => {
            tracing::warn!(
                user,
                "Approval order from a user that may not approve: refused."
            );
        }
        Outcome::CancellerRefused { user } => {
            tracing::warn!(user, "Cancel from a web user that may not cancel: refused.");
        }
        Outcome::ApprovalApplied { verdict, by, jobs } => {
            tracing::info!(
                verdict = verdict.as_str(),
                by,
                jobs,
                "Approval order applied."
            );
        }
        Outcome::ApprovalMatchedNothing { reason } => {
            tracing::warn!(%reason, "Approval order matched no job awaiting approval.");
        }
    }
}

/// Logs a run's end and records its usage data, in the run's trace.
fn finished(run: &Run, state: &RunState, now: u64) {
    let span =
        tracing::info_span!("run_finished", run_id = %run.run_id, repository = %run.repository);
    telemetry::propagation::set_parent(
        &span,
        &telemetry::propagation::headers_from(run.trace.as_deref()),
    );
    let _entered = span.enter();
    match state {
        RunState::Succeeded => tracing::info!("Run succeeded."),
        other => tracing::info!(
            state = other.as_str(),
            reason = other.reason().unwrap_or_default(),
            "Run finished."
        ),
    }
    telemetry::usage::record_run(&telemetry::usage::RunUsage {
        event: run.event.as_str(),
        state: state.as_str(),
        duration_ms: now.saturating_sub(run.created_ms),
        jobs: run.jobs.len(),
        failed_jobs: run
            .jobs
            .iter()
            .filter(|job| job.state == proto_types::UnitState::Failed)
            .count(),
    });
}

/// The next delivery from any of the consumers, job events first.
async fn next(consumers: &mut [Feed; 4]) -> Result<Incoming, DispatchError> {
    let wrap = |source: Source, delivery: Option<Result<(Delivery, Identity), BrokerError>>| {
        let (delivery, identity) =
            delivery.ok_or(DispatchError::ConsumerClosed(source.queue()))??;
        Ok(Incoming::Delivery {
            source,
            delivery,
            identity,
        })
    };
    let [events, claims, changes, control] = consumers;
    tokio::select! {
        biased;
        delivery = events.next() => wrap(Source::JobEvents, delivery),
        delivery = claims.next() => wrap(Source::Claims, delivery),
        delivery = changes.next() => wrap(Source::Changes, delivery),
        delivery = control.next() => wrap(Source::Control, delivery),
    }
}

/// The next action from the web page; never, without a page.
async fn next_web_order(orders: &mut Option<crate::web::WebOrders>) -> Option<WebOrder> {
    match orders {
        Some(orders) => orders.recv().await,
        None => std::future::pending().await,
    }
}

/// Adds whatever the consumers have ready, without waiting, up to [`MAX_BATCH`].
async fn drain(consumers: &mut [Feed], batch: &mut Vec<Incoming>) -> Result<(), DispatchError> {
    let mut open = [true; Source::ALL.len()];
    while batch.len() < MAX_BATCH && open.contains(&true) {
        for ((consumer, source), open) in consumers.iter_mut().zip(Source::ALL).zip(&mut open) {
            if !*open {
                continue;
            }
            match poll_once(consumer.next()).await {
                Some(Some(delivery)) => {
                    let (delivery, identity) = delivery?;
                    batch.push(Incoming::Delivery {
                        source,
                        delivery,
                        identity,
                    });
                }
                Some(None) => return Err(DispatchError::ConsumerClosed(source.queue())),
                None => *open = false,
            }
        }
    }
    Ok(())
}

/// How often finished runs past their retention are pruned.
const PRUNE_EVERY_MS: u64 = 3600 * 1000;
