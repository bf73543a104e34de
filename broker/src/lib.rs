//! The message broker port: publish with confirms; consume with ack, requeue or dead-letter.
//!
//! Two adapters implement it: [`amqp`] over RabbitMQ (the only module in the workspace that
//! uses lapin) and [`memory`], an in-process broker with the same ack and requeue semantics
//! that powers embedded mode (`pipelines run`). Callers see one closed enum, [`Broker`], so no
//! generic parameter spreads through the components.
//!
//! Delivery is at-least-once: a message is acked only when its consumer says so, and anything
//! unacked when a consumer goes away comes back with `redelivered` set.

mod amqp;
pub mod backoff;
pub mod definitions;
mod memory;
pub mod topology;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use uuid::Uuid;

pub use topology::Topology;

/// String headers carried with a message (trace context, dead-letter reasons).
pub type Headers = BTreeMap<String, String>;

/// The header in which a dead-lettered message carries why it was dead-lettered.
pub const REASON_HEADER: &str = "x-pipelines-reason";

/// The header in which a dead-lettered message says how many bytes of its own headers its copy
/// left out (see [`DEAD_LETTER_KEEPS_HEADER_BYTES`]).
pub const HEADERS_LEFT_OUT_HEADER: &str = "x-pipelines-headers-left-out";

/// The most bytes of a dead letter's reason; a longer one is cut.
pub const DEAD_LETTER_REASON_BYTES: usize = 4 * 1024;

/// The most bytes of a message's own headers (names and values) its dead-letter copy keeps.
/// A message's headers travel in one frame, which RabbitMQ does not split: headers that
/// filled a publisher's 128 KiB frame would not fit with the reason added, the copy would
/// fail, and the message would come back at every redelivery. Ours take a few hundred bytes.
pub const DEAD_LETTER_KEEPS_HEADER_BYTES: usize = 16 * 1024;

/// Where a message goes. Each variant maps to one exchange and routing key (see [`topology`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// Orchestrator → dispatcher.
    Changes,
    /// Dispatcher → the executors of one account and role.
    Jobs {
        account: &'a str,
        role: proto_types::ExecutorRole,
    },
    /// Executors → dispatcher: what happened to a job (outcomes, releases). Durable.
    JobEvents,
    /// Executors → dispatcher: claims (`Started`, with a `reply_to`) and heartbeats. Transient:
    /// the worker repeats them when no answer or lease renewal comes.
    Claims,
    /// Executors → dispatcher: a job's log as it is written. Durable and bounded: a full
    /// queue refuses the publish, and the worker sends it again later.
    Logs,
    /// Dispatcher → followers of one run. Not mandatory: nobody may be following.
    Status { run_id: Uuid },
    /// Operators → dispatcher: cancel a run.
    Control,
    /// An answer to a request, straight to the requester's private queue (its `reply_to`).
    /// Not mandatory: the requester may be gone, and then nobody needs the answer.
    Reply { queue: &'a str },
}

/// A message to publish.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    pub body: &'a [u8],
    /// Consumers deduplicate on it; use the payload's own id.
    pub message_id: &'a str,
    pub headers: &'a Headers,
    /// For a request: the private queue the answer goes to (see [`Broker::reply_queue`]).
    pub reply_to: Option<&'a str>,
    /// The publisher's identity, which RabbitMQ checks against the connection's user and
    /// refuses when they differ. Default: the connection's user.
    pub user_id: Option<&'a str>,
}

impl<'a> Outgoing<'a> {
    /// A message with no reply expected.
    pub fn new(body: &'a [u8], message_id: &'a str, headers: &'a Headers) -> Outgoing<'a> {
        Outgoing {
            body,
            message_id,
            headers,
            reply_to: None,
            user_id: None,
        }
    }
}

/// What went wrong, and so what the caller should do about it.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// Could not connect. Retry later; nothing was sent.
    #[error("cannot connect to the broker at {url}: {reason}")]
    Connect { url: String, reason: String },
    /// The broker accepted the publish but no queue was bound: the topology is missing. Not
    /// retryable until an operator declares it (`pipelines broker setup`).
    #[error(
        "message to exchange {exchange:?} with routing key {routing_key:?} was not routed to any \
         queue: declare the topology first (`pipelines broker setup --config FILE`)"
    )]
    Unroutable {
        exchange: String,
        routing_key: String,
    },
    /// The broker refused to take responsibility for the message. Republish.
    #[error("broker did not confirm the message to exchange {exchange:?}: {reason}")]
    NotConfirmed { exchange: String, reason: String },
    /// A channel or connection failed. Reconnect; unacked deliveries will be redelivered.
    #[error("broker {operation} failed: {reason}")]
    Protocol {
        operation: &'static str,
        reason: String,
    },
    /// The broker refused the operation: the user lacks the permission (access refused), or
    /// the message breaks a rule (a forged `user_id`). Not retryable as it is.
    #[error("the broker refused {operation}: {reason}")]
    Refused {
        operation: &'static str,
        reason: String,
    },
    /// The in-memory broker was asked about a queue nobody declared.
    #[error("queue {0:?} does not exist")]
    UnknownQueue(String),
    /// An ack or requeue for a delivery whose consumer is gone; the broker has already put the
    /// message back, so nothing is lost.
    #[error("delivery {0} is no longer held by its consumer")]
    StaleDelivery(u64),
    /// The broker did not answer in time (`timeouts.broker_connect`, `timeouts.broker_confirm`):
    /// reconnect; an unconfirmed message is published again.
    #[error("the broker did not answer {operation} within {} s", .after.as_secs())]
    Timeout {
        operation: &'static str,
        after: std::time::Duration,
    },
}

/// How long the broker may take to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BrokerTimeouts {
    /// TCP connect, TLS and the AMQP handshake, per connection.
    pub connect: std::time::Duration,
    /// A publisher confirm.
    pub confirm: std::time::Duration,
}

impl Default for BrokerTimeouts {
    fn default() -> BrokerTimeouts {
        BrokerTimeouts {
            connect: std::time::Duration::from_secs(30),
            confirm: std::time::Duration::from_secs(60),
        }
    }
}

impl BrokerError {
    /// Whether retrying the same operation later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            BrokerError::Connect { .. }
                | BrokerError::NotConfirmed { .. }
                | BrokerError::Protocol { .. }
                | BrokerError::Timeout { .. }
        )
    }
}

/// A connection to a broker: RabbitMQ or the in-process one.
#[derive(Debug, Clone)]
pub enum Broker {
    Amqp(amqp::AmqpBroker),
    Memory(memory::MemoryBroker),
}

impl Broker {
    /// Connects to RabbitMQ. `name` shows up in the management UI's connection list.
    pub async fn connect(url: &str, name: &str) -> Result<Broker, BrokerError> {
        Broker::connect_with(url, name, BrokerTimeouts::default()).await
    }

    /// Connects to RabbitMQ with the given deadlines for connecting and for each confirm.
    pub async fn connect_with(
        url: &str,
        name: &str,
        timeouts: BrokerTimeouts,
    ) -> Result<Broker, BrokerError> {
        Ok(Broker::Amqp(
            amqp::AmqpBroker::connect(url, name, timeouts).await?,
        ))
    }

    /// Connects to the first of a cluster's `nodes` that answers, starting at `first` (an
    /// index, taken modulo their number) and going round once. The index of the node it
    /// reached comes back with it; the error of the last node tried otherwise.
    pub async fn connect_any(
        nodes: &[String],
        first: usize,
        name: &str,
        timeouts: BrokerTimeouts,
    ) -> Result<(Broker, usize), BrokerError> {
        let mut last = BrokerError::Connect {
            url: String::new(),
            reason: "no broker node is configured".into(),
        };
        for offset in 0..nodes.len() {
            let index = (first + offset) % nodes.len();
            match Broker::connect_with(&nodes[index], name, timeouts).await {
                Ok(broker) => return Ok((broker, index)),
                Err(err) if err.is_transient() && offset + 1 < nodes.len() => {
                    tracing::warn!(node = %redact_url(&nodes[index]), error = %err, "A broker node does not answer; trying the next.");
                    last = err;
                }
                Err(err) => return Err(err),
            }
        }
        Err(last)
    }

    /// A fresh in-process broker, for embedded mode.
    pub fn in_memory() -> Broker {
        Broker::Memory(memory::MemoryBroker::default())
    }

    /// Whether messages carry the broker user that sent them, checked by the broker: true for
    /// RabbitMQ, false in process, where there are no users to tell apart.
    pub fn carries_users(&self) -> bool {
        match self {
            Broker::Amqp(_) => true,
            Broker::Memory(_) => false,
        }
    }

    /// Declares the topology, or, when this user may not (a least-privilege deployment, where
    /// an admin declared it with `pipelines broker setup`), says so and carries on: consuming
    /// a queue that does not exist fails later with a clear error anyway.
    pub async fn ensure_topology(&self, topology: &Topology) -> Result<(), BrokerError> {
        match self.declare_topology(topology).await {
            Err(BrokerError::Refused { reason, .. }) => {
                tracing::info!(%reason, "Not allowed to declare the topology; using what an admin declared.");
                Ok(())
            }
            other => other,
        }
    }

    /// Declares the queues that do not outlive their node (the claims queue) again: the
    /// dispatcher does it on every connection, since in a cluster the node that held them may
    /// be gone. Idempotent; allowed to the dispatcher's user by the shipped definitions.
    pub async fn declare_transient_queues(&self, topology: &Topology) -> Result<(), BrokerError> {
        match self {
            Broker::Amqp(broker) => broker.declare_transient_queues(topology).await,
            // The in-process broker's queues live as long as it does.
            Broker::Memory(_) => Ok(()),
        }
    }

    /// Declares exchanges, queues and bindings. Idempotent.
    pub async fn declare_topology(&self, topology: &Topology) -> Result<(), BrokerError> {
        match self {
            Broker::Amqp(broker) => broker.declare_topology(topology).await,
            Broker::Memory(broker) => {
                broker.declare_topology(topology);
                Ok(())
            }
        }
    }

    /// Publishes persistent messages, sending them all before waiting for the broker's confirms
    /// (one round trip instead of one per message). Fails with the first refusal, after every
    /// confirm came back; messages before and after it may have been published.
    pub async fn publish_all(
        &self,
        messages: &[(Route<'_>, Outgoing<'_>)],
    ) -> Result<(), BrokerError> {
        match self {
            Broker::Amqp(broker) => broker.publish_all(messages).await,
            Broker::Memory(broker) => {
                let mut first_error = None;
                for (route, message) in messages {
                    if let Err(err) = broker.publish(*route, *message) {
                        first_error.get_or_insert(err);
                    }
                }
                first_error.map_or(Ok(()), Err)
            }
        }
    }

    /// Sends transient requests that their sender repeats when nothing comes back (a claim, a
    /// heartbeat) and answers to such requests (a claim's answer, a stop order to a worker's
    /// reply queue), without publisher confirms: nothing is awaited but the writing. A message
    /// the broker drops (its queue full or gone) is lost without a word, which the repeat
    /// covers. Fails only when the connection does.
    pub async fn send_unconfirmed(
        &self,
        messages: &[(Route<'_>, Outgoing<'_>)],
    ) -> Result<(), BrokerError> {
        match self {
            Broker::Amqp(broker) => broker.send_unconfirmed(messages).await,
            Broker::Memory(broker) => {
                for (route, message) in messages {
                    if let Err(err) = broker.publish(*route, *message) {
                        tracing::debug!(error = %err, "An unconfirmed message was dropped.");
                    }
                }
                Ok(())
            }
        }
    }

    /// Publishes one persistent message and waits for the broker to confirm it.
    pub async fn publish(
        &self,
        route: Route<'_>,
        message: Outgoing<'_>,
    ) -> Result<(), BrokerError> {
        match self {
            Broker::Amqp(broker) => broker.publish(route, message).await,
            Broker::Memory(broker) => broker.publish(route, message),
        }
    }

    /// Consumes a declared queue with manual acks and at most `prefetch` unacked deliveries.
    pub async fn consume(&self, queue: &str, prefetch: u16) -> Result<Consumer, BrokerError> {
        match self {
            Broker::Amqp(broker) => Ok(Consumer::Amqp(broker.consume(queue, prefetch).await?)),
            Broker::Memory(broker) => Ok(Consumer::Memory(broker.consume(queue, prefetch)?)),
        }
    }

    /// [`Broker::consume`] on a connection opened for this consumer alone (in process: as
    /// [`Broker::consume`]), which closes when the consumer and its deliveries are dropped.
    /// For a queue that publishers who are not trusted write to: RabbitMQ sends a consumer a
    /// header frame larger than the frame size it asked for when a message's headers fill a
    /// publisher's frame (it adds bytes on delivery), and the consumer's connection closes on
    /// it. Apart, that takes down this consumer alone, not the process's other consumers and
    /// its publishing; open it again (with a prefetch of 1, the message comes back alone and
    /// reaches the queue's delivery limit without taking others with it).
    pub async fn consume_apart(&self, queue: &str, prefetch: u16) -> Result<Consumer, BrokerError> {
        match self {
            Broker::Amqp(broker) => {
                Ok(Consumer::Amqp(broker.consume_apart(queue, prefetch).await?))
            }
            Broker::Memory(broker) => Ok(Consumer::Memory(broker.consume(queue, prefetch)?)),
        }
    }

    /// Follows the status of one run through a private queue that lives as long as the
    /// returned consumer. Call it before publishing the event, so no status is missed.
    pub async fn follow_run(&self, run_id: Uuid) -> Result<Consumer, BrokerError> {
        match self {
            Broker::Amqp(broker) => Ok(Consumer::Amqp(broker.follow_run(run_id).await?)),
            Broker::Memory(broker) => Ok(Consumer::Memory(broker.follow_run(run_id)?)),
        }
    }

    /// Messages ready (not yet delivered) in a declared queue.
    pub async fn queue_depth(&self, queue: &str) -> Result<u32, BrokerError> {
        match self {
            Broker::Amqp(broker) => broker.queue_depth(queue).await,
            Broker::Memory(broker) => broker.queue_depth(queue),
        }
    }

    /// A private queue for answers to this process's requests: server-named, it lives as long
    /// as the returned consumer. Put [`Consumer::queue`] in [`Outgoing::reply_to`]. RabbitMQ
    /// sends its deliveries without acks (settling one does nothing there), since an answer
    /// that is lost is asked for again; settle them anyway, as the in-memory broker counts
    /// them against the consumer's prefetch.
    pub async fn reply_queue(&self) -> Result<Consumer, BrokerError> {
        match self {
            Broker::Amqp(broker) => Ok(Consumer::Amqp(broker.reply_queue().await?)),
            Broker::Memory(broker) => Ok(Consumer::Memory(broker.reply_queue()?)),
        }
    }

    /// Resolves when the broker connection is gone (never, for the in-memory broker): a
    /// service then rebuilds everything on a new connection. Use it beside the consumers,
    /// which are not always told.
    pub async fn lost(&self) -> BrokerError {
        match self {
            Broker::Amqp(broker) => broker.lost().await,
            Broker::Memory(_) => std::future::pending().await,
        }
    }

    /// Closes connections cleanly; unacked deliveries go back to their queues.
    pub async fn close(&self) {
        if let Broker::Amqp(broker) = self {
            broker.close().await;
        }
    }
}

/// A stream of deliveries from one queue.
#[derive(Debug)]
pub enum Consumer {
    Amqp(amqp::AmqpConsumer),
    Memory(memory::MemoryConsumer),
}

impl Consumer {
    /// The next delivery; `None` when the broker cancelled the consumer or the connection closed
    /// (re-subscribe or exit: unacked deliveries are redelivered either way).
    pub async fn next(&mut self) -> Option<Result<Delivery, BrokerError>> {
        match self {
            Consumer::Amqp(consumer) => consumer.next().await,
            Consumer::Memory(consumer) => consumer.next().await.map(Ok),
        }
    }

    /// The queue this consumer reads.
    pub fn queue(&self) -> &str {
        match self {
            Consumer::Amqp(consumer) => consumer.queue(),
            Consumer::Memory(consumer) => consumer.queue(),
        }
    }
}

pub use proto_types::is_reply_queue;

/// Acks every delivery of `deliveries`. Where they are *all* the unsettled deliveries of their
/// consumer so far (a batch taken whole and settled whole, the others dead-lettered first),
/// RabbitMQ gets one ack with `multiple` per consumer instead of one per message: one frame,
/// one wake-up of the connection's I/O, and one entry in a quorum queue's log for the lot.
pub async fn ack_all(deliveries: Vec<Delivery>) -> Result<(), BrokerError> {
    let mut held = HeldAcks::default();
    held.hold(deliveries)?;
    held.release()
}

/// Acks held back so that several batches' go to RabbitMQ as one ack with `multiple` per
/// consumer. Holding an ack is always safe (a message acked later is at worst redelivered, and
/// consumers are idempotent), and it spares RabbitMQ one settle per batch: on a quorum queue,
/// one entry in its log each. The same rule as [`ack_all`] holds: a held delivery must be
/// among all its consumer's unsettled ones up to the next release (dead-letter the others
/// first). In-memory deliveries are acked at once: holding them would save nothing.
#[derive(Debug, Default)]
pub struct HeldAcks {
    /// The highest delivery held, per consumer: acking it with `multiple` settles the rest.
    last: Vec<amqp::AmqpSettle>,
    held: usize,
}

impl HeldAcks {
    /// Holds these deliveries' acks (in-memory ones are acked now).
    pub fn hold(&mut self, deliveries: Vec<Delivery>) -> Result<(), BrokerError> {
        for delivery in deliveries {
            match delivery.settle {
                Settle::Auto => {}
                Settle::Memory(settle) => settle.ack()?,
                Settle::Amqp(settle) => {
                    self.held += 1;
                    match self
                        .last
                        .iter_mut()
                        .find(|kept| kept.consumer == settle.consumer)
                    {
                        Some(kept) if kept.tag < settle.tag => *kept = settle,
                        Some(_) => {}
                        None => self.last.push(settle),
                    }
                }
            }
        }
        Ok(())
    }

    /// How many deliveries' acks are held.
    pub fn len(&self) -> usize {
        self.held
    }

    /// Whether no ack is held.
    pub fn is_empty(&self) -> bool {
        self.held == 0
    }

    /// Sends every held ack: one frame per consumer, queued without waiting for its write.
    pub fn release(&mut self) -> Result<(), BrokerError> {
        self.held = 0;
        start_and_forget(
            std::mem::take(&mut self.last)
                .into_iter()
                .map(amqp::AmqpSettle::ack_through),
        )
    }
}

/// A future of [`start_all`], and its output once it came on the first poll.
type Started<F> = (Pin<Box<F>>, Option<<F as Future>::Output>);

/// Starts every future (one poll each, in order), then awaits each in order. lapin's
/// `basic_publish` queues a message's frames on its first poll and then waits for the
/// connection's I/O thread to write them: awaited one after another, N messages cost N
/// wake-ups of that thread and of ours; started together, the I/O thread writes them all in
/// one pass, and the awaits that follow mostly find them written. The first polls run in
/// order, so the messages keep their order on the channel.
pub(crate) async fn start_all<F: Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut started: Vec<Started<F>> = futures
        .into_iter()
        .map(|future| (Box::pin(future), None))
        .collect();
    std::future::poll_fn(|cx| {
        for (future, output) in &mut started {
            if let Poll::Ready(value) = future.as_mut().poll(cx) {
                *output = Some(value);
            }
        }
        Poll::Ready(())
    })
    .await;
    let mut outputs = Vec::with_capacity(started.len());
    for (future, output) in started {
        outputs.push(match output {
            Some(value) => value,
            None => future.await,
        });
    }
    outputs
}

/// Starts every future (one poll each, in order) and drops it: for lapin's acks, whose only
/// work after the first poll is waiting for the connection's I/O thread to write the frame
/// they queued. That wait costs this task a wake-up per ack and buys nothing: a write that
/// fails is a lost connection, which [`Broker::lost`] and the consumers report, and an ack lost
/// with the connection is a redelivery, which every consumer handles. A close does not
/// overtake them (lapin writes method frames in order; it is publishes that a close
/// overtakes, so sends are still waited for until written). The first error of a first poll
/// (a closed channel) is returned.
pub(crate) fn start_and_forget<T, F: Future<Output = Result<T, BrokerError>>>(
    futures: impl IntoIterator<Item = F>,
) -> Result<(), BrokerError> {
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    let mut first_error = None;
    for future in futures {
        let mut future = std::pin::pin!(future);
        if let Poll::Ready(Err(err)) = future.as_mut().poll(&mut context) {
            first_error.get_or_insert(err);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// One received message. Settle it exactly once with [`ack`](Delivery::ack),
/// [`requeue`](Delivery::requeue) or [`dead_letter`](Delivery::dead_letter); dropping it
/// unsettled leaves it unacked until the consumer goes away, when it is redelivered.
#[derive(Debug)]
pub struct Delivery {
    pub body: Vec<u8>,
    pub message_id: Option<String>,
    pub headers: Headers,
    /// The publishing user as validated by RabbitMQ, when the publisher set it.
    pub user_id: Option<String>,
    /// Set when an earlier delivery of this message was not acked.
    pub redelivered: bool,
    /// How many earlier deliveries of this message ended without an ack (a consumer died, or
    /// requeued it): RabbitMQ's `x-delivery-count` on quorum queues, 0 on a first delivery.
    pub delivery_count: u32,
    /// For a request: where the answer goes ([`Route::Reply`]).
    pub reply_to: Option<String>,
    pub(crate) settle: Settle,
}

#[derive(Debug)]
pub(crate) enum Settle {
    Amqp(amqp::AmqpSettle),
    Memory(memory::MemorySettle),
    /// From a consumer without acks ([`Broker::reply_queue`]): the broker forgot the message
    /// when it sent it, so there is nothing to settle.
    Auto,
}

impl Delivery {
    /// Whether this is the last delivery the broker promises: not acked this time either, the
    /// message reaches [`topology::DELIVERY_LIMIT`] and is dead-lettered by the broker itself,
    /// with no consumer told.
    pub fn is_last_chance(&self) -> bool {
        self.delivery_count.saturating_add(1) >= topology::DELIVERY_LIMIT
    }

    /// The message is handled and its effects are durable: the broker forgets it.
    pub async fn ack(self) -> Result<(), BrokerError> {
        match self.settle {
            Settle::Amqp(settle) => settle.ack(),
            Settle::Memory(settle) => settle.ack(),
            Settle::Auto => Ok(()),
        }
    }

    /// Not handled, through no fault of the message (shutting down, a transient error): give it
    /// back to be delivered again.
    pub async fn requeue(self) -> Result<(), BrokerError> {
        match self.settle {
            Settle::Amqp(settle) => settle.requeue().await,
            Settle::Memory(settle) => settle.requeue(),
            // Gone already: the sender asks again.
            Settle::Auto => Ok(()),
        }
    }

    /// The message can never be handled (undecodable, invalid): move it to the queue's
    /// dead-letter queue with `reason` in the [`REASON_HEADER`] header, then forget it.
    pub async fn dead_letter(self, reason: &str) -> Result<(), BrokerError> {
        tracing::warn!(message_id = ?self.message_id, %reason, "Dead-lettering a message.");
        let mut headers = self.headers;
        // Ours are set here, never taken from the sender.
        headers.retain(|name, _| !name.starts_with("x-pipelines-"));
        let bytes: usize = headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        let mut headers = if bytes > DEAD_LETTER_KEEPS_HEADER_BYTES {
            let left_out = format!(
                "{bytes} bytes of headers, more than the {DEAD_LETTER_KEEPS_HEADER_BYTES} a dead letter keeps"
            );
            Headers::from([(HEADERS_LEFT_OUT_HEADER.to_owned(), left_out)])
        } else {
            headers
        };
        let reason = proto_types::untrusted_text::head(reason, DEAD_LETTER_REASON_BYTES);
        headers.insert(REASON_HEADER.to_owned(), reason.to_owned());
        match self.settle {
            Settle::Amqp(settle) => {
                settle
                    .dead_letter(&self.body, self.message_id, headers)
                    .await
            }
            Settle::Memory(settle) => settle.dead_letter(headers),
            // Nothing to move: the warning above is all that is left of it.
            Settle::Auto => Ok(()),
        }
    }
}

/// The frame size a consumer of publishers it does not trust asks for: RabbitMQ's default
/// `frame_max`, the most any publisher may then send. RabbitMQ does not split a message's
/// headers: it sends a consumer a header frame larger than the consumer asked for, and the
/// consumer's connection closes on it (`FRAME-ERROR: frame too large`), at every redelivery.
/// Other components ask for 16 KiB frames, for their memory.
pub const UNTRUSTED_PUBLISHERS_FRAME_MAX: u32 = 131_072;

/// `url` asking for frames of `bytes`, unless it names its own `frame_max`.
pub fn with_frame_max(url: &str, bytes: u32) -> String {
    if url.contains("frame_max=") {
        return url.to_owned();
    }
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}frame_max={bytes}")
}

/// Hides the password of an AMQP URL, for messages and logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((credentials, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    let user = credentials.split(':').next().unwrap_or_default();
    format!("{scheme}://{user}:***@{host}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_size_is_added_to_a_url_that_names_none() {
        assert_eq!(
            with_frame_max("amqp://u:p@h:5672/v", 131_072),
            "amqp://u:p@h:5672/v?frame_max=131072"
        );
        assert_eq!(
            with_frame_max("amqp://u:p@h/v?heartbeat=30", 131_072),
            "amqp://u:p@h/v?heartbeat=30&frame_max=131072"
        );
        assert_eq!(
            with_frame_max("amqp://h/v?frame_max=8192", 131_072),
            "amqp://h/v?frame_max=8192"
        );
    }

    #[test]
    fn passwords_are_redacted_from_urls() {
        assert_eq!(
            redact_url("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact_url("amqp://127.0.0.1"), "amqp://127.0.0.1");
    }
}
