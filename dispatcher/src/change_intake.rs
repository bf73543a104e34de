//! Change events on a broker connection of their own, opened again at once whenever it fails,
//! so that a message built to close it stalls neither claims nor job events.
//!
//! Change events come from orchestrators, whose login a pull request's CI may hold. RabbitMQ
//! adds a few bytes to a message's headers when it delivers it and never splits headers, so a
//! change event whose headers fill a publisher's frame to its last bytes arrives as a frame
//! larger than the dispatcher may accept, and the connection it arrives on closes. On the
//! dispatcher's shared consuming connection that took down every consumer and, through the
//! reconnect backoff, stalled the dispatcher for minutes at each of the message's deliveries.
//! Here it costs a reconnect of this one connection per delivery, with a prefetch of 1 so
//! that the message comes back alone, until the queue's delivery limit moves it to its
//! dead-letter queue.

use std::time::Duration;

use broker::backoff::Backoff;
use broker::topology::CHANGES_QUEUE;
use broker::{Broker, BrokerError, Consumer, Delivery};
use dispatcher_core::identity::Identity;
use telemetry::Metrics;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::identity::Verifier;
use crate::metrics;

/// Unacked change events at most: one, so that a message that closes the connection is the
/// only one the broker counts a delivery against (every unacked message is returned, and
/// counted, when a connection closes). Change events are few; each costs a transaction anyway.
pub(crate) const PREFETCH: u16 = 1;

/// Reopening after a failure: the first at once (within 20 ms), then doubling up to a second
/// while connections keep failing within 10 s of opening, so that a stream of such messages
/// cannot make the dispatcher hammer the broker with connections.
const REOPEN: Backoff = Backoff {
    first: Duration::from_millis(20),
    cap: Duration::from_secs(1),
    stable_after: Duration::from_secs(10),
};

/// How long the connection may fail to open again before the dispatcher is told: it then
/// starts over on all its connections, with the service's own backoff, and says so in
/// `/readyz`, rather than going on without change events while looking ready.
const GIVE_UP_AFTER: Duration = Duration::from_secs(60);

/// A change event as it arrived, with what its identity token says (always
/// [`Identity::Absent`] without `[dispatcher.oidc]`).
pub(crate) type Arrival = (Delivery, Identity);

/// The change events, as they arrive on their own connection.
#[derive(Debug)]
pub(crate) struct ChangeIntake {
    deliveries: mpsc::Receiver<Result<Arrival, BrokerError>>,
    feed: tokio::task::JoinHandle<()>,
}

impl Drop for ChangeIntake {
    fn drop(&mut self) {
        // Closes the connection; what it delivered and nobody acked goes back to the queue.
        self.feed.abort();
    }
}

impl ChangeIntake {
    /// Opens the connection and starts consuming. Fails as [`Broker::consume_apart`] does: at
    /// start, a refusal is the deployment's mistake and is reported as such. With a
    /// `verifier`, each event's identity token is checked before it is handed on (one at a
    /// time, as they are delivered: the issuer's keys are read only for a key not seen yet).
    pub(crate) async fn start(
        broker: &Broker,
        metrics: Metrics,
        verifier: Option<Verifier>,
    ) -> Result<ChangeIntake, BrokerError> {
        let consumer = broker.consume_apart(CHANGES_QUEUE, PREFETCH).await?;
        let (sender, deliveries) = mpsc::channel(usize::from(PREFETCH));
        let feed = tokio::spawn(feed(broker.clone(), consumer, metrics, verifier, sender));
        Ok(ChangeIntake { deliveries, feed })
    }

    /// The next change event; an error once the connection cannot be opened again (refused,
    /// or still failing after [`GIVE_UP_AFTER`]); `None` after that.
    pub(crate) async fn next(&mut self) -> Option<Result<Arrival, BrokerError>> {
        self.deliveries.recv().await
    }
}

/// Hands on what `consumer` delivers; when its connection fails, opens another.
async fn feed(
    broker: Broker,
    mut consumer: Consumer,
    metrics: Metrics,
    mut verifier: Option<Verifier>,
    sender: mpsc::Sender<Result<Arrival, BrokerError>>,
) {
    let mut failures = 0_u32;
    loop {
        let opened = Instant::now();
        let ended = loop {
            match consumer.next().await {
                Some(Ok(delivery)) => {
                    let identity = match &mut verifier {
                        Some(verifier) => verifier.identify(&delivery.headers).await,
                        None => Identity::Absent,
                    };
                    if sender.send(Ok((delivery, identity))).await.is_err() {
                        return;
                    }
                }
                Some(Err(err)) => break err.to_string(),
                None => break "the broker ended the consumer".to_owned(),
            }
        };
        // Closes the failed connection before the next one opens.
        drop(consumer);
        failures = REOPEN.after_connection(failures, opened.elapsed());
        tracing::warn!(
            queue = CHANGES_QUEUE,
            reason = %ended,
            "The connection for change events failed; opening another. A change event whose headers fill its frame closes it at each delivery until the queue's delivery limit dead-letters it."
        );
        let failing_since = Instant::now();
        consumer = loop {
            tokio::time::sleep(REOPEN.delay(failures, random())).await;
            metrics.inc(metrics::CHANGE_CONNECTION_REOPENED, &[]);
            match broker.consume_apart(CHANGES_QUEUE, PREFETCH).await {
                Ok(consumer) => break consumer,
                Err(err) if err.is_transient() && failing_since.elapsed() < GIVE_UP_AFTER => {
                    tracing::warn!(error = %err, "Cannot open the connection for change events yet; trying again.");
                    failures = failures.saturating_add(1);
                }
                Err(err) => {
                    let _ = sender.send(Err(err)).await;
                    return;
                }
            }
        };
    }
}

/// A random number for jitter: version 4 uuids are random, and already a dependency.
fn random() -> u64 {
    uuid::Uuid::new_v4().as_u64_pair().0
}
