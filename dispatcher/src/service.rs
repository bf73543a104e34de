//! The dispatcher's broker edge: consume change events and job events, feed the pure parts,
//! publish what they decide, and ack only once that is published.

use std::collections::HashMap;
use std::future::Future;

use broker::topology::{CHANGES_QUEUE, JOB_EVENTS_QUEUE};
use broker::{Broker, BrokerError, Consumer, Delivery, Headers, Outgoing, Route, Topology};
use config::Config;
use proto_types::{ChangeEvent, Job, JobEvent, Payload, RunState, RunStatus};
use tracing::Instrument;
use uuid::Uuid;

use crate::policy::{self, AccountRouter};
use crate::run::Run;

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// The broker failed under us: exit and let the supervisor restart us. Everything not yet
    /// acked is redelivered.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("the broker closed the {0} consumer")]
    ConsumerClosed(&'static str),
}

/// The dispatcher's state: the policy and the runs it is following.
#[derive(Debug)]
pub struct Dispatcher {
    broker: Broker,
    config: Config,
    router: AccountRouter,
    runs: HashMap<Uuid, Run>,
}

impl Dispatcher {
    pub fn new(broker: Broker, config: Config) -> Dispatcher {
        let router = AccountRouter::new(&config);
        Dispatcher {
            broker,
            config,
            router,
            runs: HashMap::new(),
        }
    }

    /// Declares the topology, then handles messages until `shutdown` resolves.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), DispatchError> {
        self.broker
            .declare_topology(&Topology::new(self.config.account_names()))
            .await?;
        let mut changes = self.broker.consume(CHANGES_QUEUE, 16).await?;
        let mut events = self.broker.consume(JOB_EVENTS_QUEUE, 256).await?;
        tracing::info!(accounts = ?self.config.account_names(), "Dispatcher ready.");
        tokio::pin!(shutdown);
        loop {
            // Messages are handled one at a time: run state needs no locks, and every ack
            // follows the publishes its message caused.
            tokio::select! {
                biased;
                () = &mut shutdown => {
                    tracing::info!("Dispatcher shutting down.");
                    return Ok(());
                }
                delivery = next(&mut events, "job events") => self.on_job_event(delivery?).await?,
                delivery = next(&mut changes, "change events") => self.on_change_event(delivery?).await?,
            }
        }
    }

    async fn on_change_event(&mut self, delivery: Delivery) -> Result<(), DispatchError> {
        let event = match ChangeEvent::decode(&delivery.body) {
            Ok(event) => event,
            Err(err) => {
                delivery
                    .dead_letter(&format!("undecodable change event: {err}"))
                    .await?;
                return Ok(());
            }
        };
        let span = tracing::info_span!("run", run_id = %event.id, repository = %event.repository, event = %event.trigger.kind());
        async move {
            if let Some(run) = self.runs.get(&event.id) {
                // A redelivery of an event we already turned into a run: say how it is going.
                tracing::info!("Change event redelivered; run already exists.");
                publish_status(&self.broker, &run.status()).await?;
                delivery.ack().await?;
                return Ok(());
            }
            let plan = match policy::plan(&event, &self.config, &self.router) {
                Ok(plan) => plan,
                Err(reason) => {
                    tracing::warn!(%reason, "Change event rejected.");
                    publish_status(&self.broker, &rejected(&event, &reason)).await?;
                    delivery.dead_letter(&format!("rejected: {reason}")).await?;
                    return Ok(());
                }
            };
            let mut run = Run::new(
                event.id,
                &event.repository,
                event.trigger.kind(),
                &event.head_sha,
                &event.base_sha,
                &plan,
            );
            tracing::info!(jobs = plan.units.len(), "Run accepted.");
            let ready = run.take_ready();
            publish_jobs(&self.broker, &ready).await?;
            let status = run.status();
            publish_status(&self.broker, &status).await?;
            if status.state.is_final() {
                tracing::info!(state = ?status.state, "Run finished.");
            }
            self.runs.insert(event.id, run);
            delivery.ack().await?;
            Ok(())
        }
        .instrument(span)
        .await
    }

    async fn on_job_event(&mut self, delivery: Delivery) -> Result<(), DispatchError> {
        let event = match JobEvent::decode(&delivery.body) {
            Ok(event) => event,
            Err(err) => {
                delivery
                    .dead_letter(&format!("undecodable job event: {err}"))
                    .await?;
                return Ok(());
            }
        };
        let Some(run) = self
            .runs
            .get_mut(&event.run_id)
            .filter(|run| run.contains_job(event.job_id))
        else {
            delivery
                .dead_letter(&format!(
                    "job event for unknown run {} / job {}",
                    event.run_id, event.job_id
                ))
                .await?;
            return Ok(());
        };
        let span = tracing::info_span!("job_event", run_id = %event.run_id, job_id = %event.job_id, worker = %event.worker);
        if run.on_event(&event) {
            // Decide everything first (pure), then publish: the borrow of the run ends here.
            let ready = run.take_ready();
            let status = run.status();
            let finished = status.state.is_final();
            async {
                publish_jobs(&self.broker, &ready).await?;
                publish_status(&self.broker, &status).await?;
                if finished {
                    tracing::info!(state = ?status.state, "Run finished.");
                }
                Ok::<(), BrokerError>(())
            }
            .instrument(span)
            .await?;
        }
        delivery.ack().await?;
        Ok(())
    }
}

async fn next(consumer: &mut Consumer, what: &'static str) -> Result<Delivery, DispatchError> {
    match consumer.next().await {
        Some(delivery) => Ok(delivery?),
        None => Err(DispatchError::ConsumerClosed(what)),
    }
}

fn rejected(event: &ChangeEvent, reason: &str) -> RunStatus {
    RunStatus {
        run_id: event.id,
        repository: event.repository.clone(),
        event: event.trigger.kind(),
        head_sha: event.head_sha.clone(),
        state: RunState::Rejected(reason.to_owned()),
        units: Vec::new(),
    }
}

async fn publish_jobs(broker: &Broker, jobs: &[Job]) -> Result<(), BrokerError> {
    let headers = Headers::new();
    for job in jobs {
        let body = job.encode();
        let id = job.job_id.to_string();
        let message = Outgoing {
            body: &body,
            message_id: &id,
            headers: &headers,
        };
        broker
            .publish(
                Route::Jobs {
                    account: &job.account,
                },
                message,
            )
            .await?;
        tracing::info!(job_id = %job.job_id, unit = %job.unit, account = %job.account, action = %job.action, "Job queued.");
    }
    Ok(())
}

async fn publish_status(broker: &Broker, status: &RunStatus) -> Result<(), BrokerError> {
    let body = status.encode();
    let id = Uuid::new_v4().to_string();
    let headers = Headers::new();
    let message = Outgoing {
        body: &body,
        message_id: &id,
        headers: &headers,
    };
    broker
        .publish(
            Route::Status {
                run_id: status.run_id,
            },
            message,
        )
        .await
}
