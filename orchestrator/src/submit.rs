//! Submitting a change event and following its run: the orchestrator's broker edge.

use broker::{Broker, BrokerError, Consumer, Headers, Outgoing, Route};
use proto_types::{ChangeEvent, Payload, RunStatus};

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("the run's status stream ended before the run did (broker connection lost?)")]
    FollowerClosed,
}

/// Publishes the event and waits for the broker's confirm: once this returns, the event is
/// durable and the dispatcher will see it. `id_token` is the CI job's OIDC token, which
/// vouches for the pull request the event names ([`proto_types::ID_TOKEN_HEADER`]).
pub async fn submit(
    broker: &Broker,
    event: &ChangeEvent,
    id_token: Option<&str>,
) -> Result<(), SubmitError> {
    let body = event.encode();
    let id = event.id.to_string();
    // The run's trace starts here: the dispatcher continues it from these headers.
    let mut headers: Headers = telemetry::propagation::current_headers();
    // An empty one (a workflow whose token request failed) is none: the dispatcher then says
    // the event carries no token, which points at the workflow.
    if let Some(token) = id_token.map(str::trim).filter(|token| !token.is_empty()) {
        headers.insert(proto_types::ID_TOKEN_HEADER.to_owned(), token.to_owned());
    }
    let message = Outgoing::new(&body, &id, &headers);
    broker.publish(Route::Changes, message).await?;
    tracing::info!(run_id = %event.id, units = event.changes.iter().map(|c| c.units.len()).sum::<usize>(), "Change event published.");
    Ok(())
}

/// Reads status snapshots until the run is final; calls `on_update` with each one.
/// Subscribe with [`Broker::follow_run`] *before* submitting, so that nothing is missed.
pub async fn follow(
    consumer: &mut Consumer,
    mut on_update: impl FnMut(&RunStatus),
) -> Result<RunStatus, SubmitError> {
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery?;
        let status = RunStatus::decode(&delivery.body);
        // The queue is private to this follower: settling never affects anyone else.
        delivery.ack().await?;
        match status {
            Ok(status) => {
                on_update(&status);
                if status.state.is_final() {
                    return Ok(status);
                }
            }
            Err(err) => tracing::warn!(error = %err, "Ignoring an undecodable run status."),
        }
    }
    Err(SubmitError::FollowerClosed)
}
