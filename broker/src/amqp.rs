//! The RabbitMQ adapter: the only code in the workspace that touches lapin.
//!
//! Publishing and consuming use separate connections, because RabbitMQ blocks a publishing
//! connection under a resource alarm and a consumer must still be able to ack. Each consumer
//! gets its own channel, because a channel error kills every consumer on the channel.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_lite::StreamExt;
use lapin::Confirmation;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use uuid::Uuid;

use crate::topology::{
    self, DEAD_LETTER_EXCHANGE, ExchangeKind, Resolved, STATUS_EXCHANGE, Topology,
};
use crate::{
    BrokerError, BrokerTimeouts, Delivery, Headers, Outgoing, Route, Settle, redact_url, start_all,
};

/// Marks our envelope; consumers do not depend on it, operators reading a queue do.
const CONTENT_TYPE: &str = "application/vnd.pipelines.v1";
/// The largest AMQP frame asked for (bytes): small buffers; see [`AmqpBroker::connect`].
const FRAME_MAX: u32 = 16 * 1024;
/// How often [`AmqpBroker::lost`] looks at the connections' state.
const WATCH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

#[derive(Clone)]
pub struct AmqpBroker {
    inner: Arc<Inner>,
}

struct Inner {
    url: String,
    name: String,
    /// The user the connection authenticated as: every message says so (`user_id`), and
    /// RabbitMQ checks it.
    user: Option<String>,
    publish_connection: Connection,
    publish_channel: Channel,
    /// On the publishing connection, without publisher confirms: for requests that their
    /// sender repeats when nothing comes back, and the answers to them
    /// ([`AmqpBroker::send_unconfirmed`]).
    request_channel: Channel,
    consume_connection: Connection,
    /// Where and how to connect, password included, for the connections of consumers that
    /// have one of their own ([`AmqpBroker::consume_apart`]).
    uri: AMQPUri,
    connect_timeout: std::time::Duration,
    confirm_timeout: std::time::Duration,
}

impl fmt::Debug for AmqpBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpBroker")
            .field("url", &self.inner.url)
            .field("name", &self.inner.name)
            .finish_non_exhaustive()
    }
}

/// How long closing a connection may take before it is abandoned.
const CLOSE_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

fn protocol(operation: &'static str) -> impl FnOnce(lapin::Error) -> BrokerError {
    move |err| {
        // 403 ACCESS_REFUSED and 406 PRECONDITION_FAILED: the broker's rules, not a fault.
        let refused = matches!(
            err.kind(),
            lapin::ErrorKind::ProtocolError(amqp) if matches!(amqp.get_id(), 403 | 406)
        );
        if refused {
            BrokerError::Refused {
                operation,
                reason: err.to_string(),
            }
        } else {
            BrokerError::Protocol {
                operation,
                reason: err.to_string(),
            }
        }
    }
}

/// Opens one connection named `name` (the management UI's connection list shows it), within
/// `timeout`.
async fn open_connection(
    uri: &AMQPUri,
    redacted: &str,
    name: String,
    timeout: std::time::Duration,
) -> Result<Connection, BrokerError> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    // A listener that accepts and never speaks AMQP would hold us for ever.
    tokio::time::timeout(timeout, Connection::connect_uri(uri.clone(), properties))
        .await
        .map_err(|_| BrokerError::Connect {
            url: redacted.to_owned(),
            reason: format!(
                "no AMQP handshake within {} s (timeouts.broker_connect)",
                timeout.as_secs()
            ),
        })?
        .map_err(|err| BrokerError::Connect {
            url: redacted.to_owned(),
            reason: err.to_string(),
        })
}

impl AmqpBroker {
    pub(crate) async fn connect(
        url: &str,
        name: &str,
        timeouts: BrokerTimeouts,
    ) -> Result<AmqpBroker, BrokerError> {
        let redacted = redact_url(url);
        let mut uri: AMQPUri = url.parse().map_err(|reason| BrokerError::Connect {
            url: redacted.clone(),
            reason,
        })?;
        // lapin keeps 32 frames of send and of receive buffer per connection: at RabbitMQ's
        // default frame_max of 128 KiB that is 8 MiB a connection, most of an idle worker's
        // memory. Larger messages are split into frames; a URL's own frame_max wins.
        uri.query.frame_max.get_or_insert(FRAME_MAX);
        let publish_connection =
            open_connection(&uri, &redacted, format!("{name}-publish"), timeouts.connect).await?;
        let consume_connection =
            open_connection(&uri, &redacted, format!("{name}-consume"), timeouts.connect).await?;
        let setup = async {
            let publish_channel = publish_connection
                .create_channel()
                .await
                .map_err(protocol("channel.open"))?;
            publish_channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(protocol("confirm.select"))?;
            let request_channel = publish_connection
                .create_channel()
                .await
                .map_err(protocol("channel.open"))?;
            Ok::<_, BrokerError>((publish_channel, request_channel))
        };
        let (publish_channel, request_channel) = tokio::time::timeout(timeouts.connect, setup)
            .await
            .map_err(|_| BrokerError::Timeout {
                operation: "channel.open",
                after: timeouts.connect,
            })??;
        Ok(AmqpBroker {
            inner: Arc::new(Inner {
                url: redacted,
                name: name.to_owned(),
                user: url_user(url),
                publish_connection,
                publish_channel,
                request_channel,
                consume_connection,
                uri,
                connect_timeout: timeouts.connect,
                confirm_timeout: timeouts.confirm,
            }),
        })
    }

    /// A new channel on the consuming connection: one per consumer or administrative task, so
    /// that a channel error never takes anything else down.
    async fn consume_channel(&self) -> Result<Channel, BrokerError> {
        self.inner
            .consume_connection
            .create_channel()
            .await
            .map_err(protocol("channel.open"))
    }

    pub(crate) async fn declare_topology(&self, topology: &Topology) -> Result<(), BrokerError> {
        let channel = self.consume_channel().await?;
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        for (name, kind) in topology.exchanges() {
            let kind = match kind {
                ExchangeKind::Direct => lapin::ExchangeKind::Direct,
                ExchangeKind::Topic => lapin::ExchangeKind::Topic,
            };
            channel
                .exchange_declare(name.into(), kind, durable, FieldTable::default())
                .await
                .map_err(protocol("exchange.declare"))?;
        }
        for spec in topology.work_queues() {
            let arguments = field_table(topology::work_queue_arguments(&spec));
            declare_and_bind(
                &channel,
                &spec.name,
                spec.kind.durable(),
                spec.exchange,
                &spec.routing_key,
                arguments,
            )
            .await?;
            let arguments = field_table(topology::dead_letter_queue_arguments());
            declare_and_bind(
                &channel,
                &spec.dead_letter_queue,
                true,
                DEAD_LETTER_EXCHANGE,
                &spec.name,
                arguments,
            )
            .await?;
        }
        let _ = channel.close(200, "topology declared".into()).await;
        Ok(())
    }

    /// Declares the queues that do not outlive their node (the claims queue) and binds them.
    pub(crate) async fn declare_transient_queues(
        &self,
        topology: &Topology,
    ) -> Result<(), BrokerError> {
        let channel = self.consume_channel().await?;
        for spec in topology
            .work_queues()
            .into_iter()
            .filter(|spec| !spec.kind.durable())
        {
            let arguments = field_table(topology::work_queue_arguments(&spec));
            declare_and_bind(
                &channel,
                &spec.name,
                false,
                spec.exchange,
                &spec.routing_key,
                arguments,
            )
            .await?;
        }
        let _ = channel.close(200, "transient queues declared".into()).await;
        Ok(())
    }

    pub(crate) async fn publish(
        &self,
        route: Route<'_>,
        message: Outgoing<'_>,
    ) -> Result<(), BrokerError> {
        self.publish_raw(&topology::resolve(route), message).await
    }

    /// Sends every message before waiting for any confirm: one round trip for the lot instead
    /// of one each. Fails with the first error, after every confirm came back.
    pub(crate) async fn publish_all(
        &self,
        messages: &[(Route<'_>, Outgoing<'_>)],
    ) -> Result<(), BrokerError> {
        let (targets, sent) = self.send_all(&self.inner.publish_channel, messages).await;
        let mut first_error = None;
        let mut pending = Vec::with_capacity(messages.len());
        for (target, sent) in targets.iter().zip(sent) {
            match sent {
                Ok(confirm) => pending.push((target, confirm)),
                Err(err) => {
                    first_error.get_or_insert(err);
                }
            }
        }
        let deadline = tokio::time::Instant::now() + self.inner.confirm_timeout;
        for (target, confirm) in pending {
            let confirmed = match tokio::time::timeout_at(deadline, confirm).await {
                Ok(confirmed) => confirmed.map_err(protocol("publisher confirm")),
                Err(_) => Err(self.confirm_timed_out()),
            };
            let result =
                confirmed.and_then(|c| check_confirmation(c, target.exchange, &target.routing_key));
            if let Err(err) = result {
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Sends transient messages without publisher confirms: requests that their sender repeats
    /// when nothing comes back (claims, heartbeats) and the answers to them. A message the
    /// broker drops (a full queue, a reply queue that is gone) is never known to be lost, which
    /// is what repeating on silence is for; what this saves is a confirm frame each way and the
    /// wait for it. Fails only when the channel or connection does.
    pub(crate) async fn send_unconfirmed(
        &self,
        messages: &[(Route<'_>, Outgoing<'_>)],
    ) -> Result<(), BrokerError> {
        let (_, sent) = self.send_all(&self.inner.request_channel, messages).await;
        sent.into_iter().find_map(Result::err).map_or(Ok(()), Err)
    }

    /// Sends every message on `channel`, all started before any is awaited; where each went,
    /// and what each send gave.
    async fn send_all(
        &self,
        channel: &Channel,
        messages: &[(Route<'_>, Outgoing<'_>)],
    ) -> (
        Vec<Resolved>,
        Vec<Result<lapin::PublisherConfirm, BrokerError>>,
    ) {
        let targets: Vec<Resolved> = messages
            .iter()
            .map(|(route, _)| topology::resolve(*route))
            .collect();
        let sends = targets
            .iter()
            .zip(messages)
            .map(|(target, (_, message))| self.send(channel, target, *message));
        let sent = start_all(sends).await;
        (targets, sent)
    }

    async fn publish_raw(
        &self,
        target: &Resolved,
        message: Outgoing<'_>,
    ) -> Result<(), BrokerError> {
        let confirm = self
            .send(&self.inner.publish_channel, target, message)
            .await?;
        let confirmation = tokio::time::timeout(self.inner.confirm_timeout, confirm)
            .await
            .map_err(|_| self.confirm_timed_out())?
            .map_err(protocol("publisher confirm"))?;
        check_confirmation(confirmation, target.exchange, &target.routing_key)
    }

    fn confirm_timed_out(&self) -> BrokerError {
        BrokerError::Timeout {
            operation: "a publisher confirm (timeouts.broker_confirm)",
            after: self.inner.confirm_timeout,
        }
    }

    /// Sends one message on `channel` once its frames are written; the returned future
    /// resolves with the broker's confirm (at once on a channel without confirms).
    async fn send(
        &self,
        channel: &Channel,
        target: &Resolved,
        message: Outgoing<'_>,
    ) -> Result<lapin::PublisherConfirm, BrokerError> {
        let mut properties = BasicProperties::default()
            .with_delivery_mode(if target.persistent { 2 } else { 1 })
            .with_content_type(CONTENT_TYPE.into())
            .with_message_id(message.message_id.into())
            .with_headers(to_field_table(message.headers));
        if let Some(reply_to) = message.reply_to {
            properties = properties.with_reply_to(reply_to.into());
        }
        if let Some(user) = message.user_id.or(self.inner.user.as_deref()) {
            properties = properties.with_user_id(user.into());
        }
        let options = BasicPublishOptions {
            mandatory: target.mandatory,
            ..BasicPublishOptions::default()
        };
        channel
            .basic_publish(
                target.exchange.into(),
                target.routing_key.as_str().into(),
                options,
                message.body,
                properties,
            )
            .await
            .map_err(protocol("basic.publish"))
    }

    pub(crate) async fn consume(
        &self,
        queue: &str,
        prefetch: u16,
    ) -> Result<AmqpConsumer, BrokerError> {
        let channel = self.consume_channel().await?;
        self.consume_on(channel, queue, Some(prefetch)).await
    }

    /// Consumes `queue` on a connection opened for this consumer alone: it closes when the
    /// consumer and its deliveries are dropped ([`crate::Broker::consume_apart`]). The
    /// handshake has `timeouts.connect`, and so do the channel's opening, its QoS and the
    /// consume, together: a broker that opens a channel and never answers `basic.consume`
    /// fails it too.
    pub(crate) async fn consume_apart(
        &self,
        queue: &str,
        prefetch: u16,
    ) -> Result<AmqpConsumer, BrokerError> {
        let inner = &self.inner;
        let name = format!("{}-{queue}", inner.name);
        let connection =
            open_connection(&inner.uri, &inner.url, name, inner.connect_timeout).await?;
        let consume = async {
            let channel = connection
                .create_channel()
                .await
                .map_err(protocol("channel.open"))?;
            self.consume_on(channel, queue, Some(prefetch)).await
        };
        let mut consumer = tokio::time::timeout(inner.connect_timeout, consume)
            .await
            .map_err(|_| BrokerError::Timeout {
                operation: "channel.open, basic.qos and basic.consume",
                after: inner.connect_timeout,
            })??;
        consumer.own_connection = Some(connection);
        Ok(consumer)
    }

    /// Consumes `queue` on `channel`. `prefetch: None` consumes without acks: the broker
    /// forgets each message as it sends it.
    async fn consume_on(
        &self,
        channel: Channel,
        queue: &str,
        prefetch: Option<u16>,
    ) -> Result<AmqpConsumer, BrokerError> {
        if let Some(prefetch) = prefetch {
            // Per-consumer prefetch: global QoS is an error on quorum queues.
            channel
                .basic_qos(prefetch.max(1), BasicQosOptions { global: false })
                .await
                .map_err(protocol("basic.qos"))?;
        }
        let tag = format!("{}-{}", self.inner.name, Uuid::new_v4());
        let options = BasicConsumeOptions {
            no_ack: prefetch.is_none(),
            ..BasicConsumeOptions::default()
        };
        let consumer = channel
            .basic_consume(queue.into(), tag.into(), options, FieldTable::default())
            .await
            .map_err(protocol("basic.consume"))?;
        Ok(AmqpConsumer {
            broker: self.clone(),
            queue: queue.to_owned(),
            serial: next_consumer_serial(),
            auto_ack: prefetch.is_none(),
            channel: Arc::new(channel),
            consumer,
            own_connection: None,
        })
    }

    pub(crate) async fn follow_run(&self, run_id: Uuid) -> Result<AmqpConsumer, BrokerError> {
        let (channel, name) = self.private_queue().await?;
        channel
            .queue_bind(
                name.as_str().into(),
                STATUS_EXCHANGE.into(),
                topology::status_routing_key(run_id).into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(protocol("queue.bind"))?;
        drop(channel);
        self.consume(&name, 100).await
    }

    pub(crate) async fn queue_depth(&self, queue: &str) -> Result<u32, BrokerError> {
        let channel = self.consume_channel().await?;
        // Passive: only asks; a missing queue is an error rather than a new queue.
        let options = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let declared = channel
            .queue_declare(queue.into(), options, FieldTable::default())
            .await
            .map_err(protocol("queue.declare (passive)"))?;
        let _ = channel.close(200, "depth read".into()).await;
        Ok(declared.message_count())
    }

    pub(crate) async fn reply_queue(&self) -> Result<AmqpConsumer, BrokerError> {
        let (channel, name) = self.private_queue().await?;
        drop(channel);
        // Without acks: the queue is exclusive, so whatever it holds dies with this connection
        // whether acked or not, and a lost claim answer is asked for again. An ack per answer
        // would buy nothing and cost a frame each way.
        let channel = self.consume_channel().await?;
        self.consume_on(channel, &name, None).await
    }

    /// Declares a server-named queue that disappears with the consuming connection.
    async fn private_queue(&self) -> Result<(Channel, String), BrokerError> {
        let channel = self.consume_channel().await?;
        let options = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..QueueDeclareOptions::default()
        };
        let queue = channel
            .queue_declare("".into(), options, FieldTable::default())
            .await
            .map_err(protocol("queue.declare"))?;
        let name = queue.name().as_str().to_owned();
        Ok((channel, name))
    }

    /// Resolves once either connection is no longer open. lapin tells consumers when their
    /// connection fails, but a consumer idle at that moment was seen waiting for ever after
    /// RabbitMQ stopped (`stop_app`); this watch does not depend on being told.
    pub(crate) async fn lost(&self) -> BrokerError {
        tokio::select! {
            lost = watch_connection("publish", &self.inner.publish_connection) => lost,
            lost = watch_connection("consume", &self.inner.consume_connection) => lost,
        }
    }

    /// Closes both connections, each within [`CLOSE_WITHIN`]: a connection whose socket died
    /// before its status says so never answers `connection.close`, and waiting for that answer
    /// kept a dispatcher from reconnecting (seen once in the broker-restart test).
    ///
    /// The consuming connection goes first: nothing more is delivered, and the acks queued on
    /// it without a wait ([`crate::start_and_forget`]) are written ahead of its close.
    pub(crate) async fn close(&self) {
        for (which, connection) in [
            ("consume", &self.inner.consume_connection),
            ("publish", &self.inner.publish_connection),
        ] {
            let closing = connection.close(200, "closing".into());
            if tokio::time::timeout(CLOSE_WITHIN, closing).await.is_err() {
                tracing::warn!(
                    connection = which,
                    within_s = CLOSE_WITHIN.as_secs(),
                    "The broker did not answer the close of a connection; leaving it."
                );
            }
        }
    }
}

/// The (percent-decoded) user name of an AMQP URL.
fn url_user(url: &str) -> Option<String> {
    let (_, rest) = url.split_once("://")?;
    let (credentials, _) = rest.rsplit_once('@')?;
    let user = credentials.split(':').next()?;
    let mut decoded = Vec::with_capacity(user.len());
    let mut bytes = user.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let hex: String = bytes.by_ref().take(2).map(char::from).collect();
                decoded.push(u8::from_str_radix(&hex, 16).ok()?);
            }
            _ => decoded.push(b),
        }
    }
    let user = String::from_utf8(decoded).ok()?;
    (!user.is_empty()).then_some(user)
}

fn field_table(arguments: Vec<(&'static str, topology::Argument)>) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in arguments {
        let value = match value {
            topology::Argument::Text(text) => long_string(text),
            topology::Argument::Owned(text) => long_string(&text),
            topology::Argument::Number(n) => {
                AMQPValue::LongInt(i32::try_from(n).unwrap_or(i32::MAX))
            }
        };
        table.insert(key.into(), value);
    }
    table
}

fn long_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

async fn declare_and_bind(
    channel: &Channel,
    queue: &str,
    durable: bool,
    exchange: &str,
    routing_key: &str,
    arguments: FieldTable,
) -> Result<(), BrokerError> {
    let options = QueueDeclareOptions {
        durable,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.into(), options, arguments)
        .await
        .map_err(protocol("queue.declare"))?;
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            routing_key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(protocol("queue.bind"))
}

fn to_field_table(headers: &Headers) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in headers {
        table.insert(ShortString::from(key.as_str()), long_string(value));
    }
    table
}

fn from_field_table(table: Option<&FieldTable>) -> Headers {
    let Some(table) = table else {
        return Headers::new();
    };
    table
        .inner()
        .iter()
        .filter_map(|(key, value)| {
            let text = match value {
                AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                AMQPValue::ShortString(s) => s.as_str().to_owned(),
                // x-death and friends are tables: not ours to interpret.
                _ => return None,
            };
            Some((key.as_str().to_owned(), text))
        })
        .collect()
}

/// The `x-delivery-count` header quorum queues put on a redelivered message (0 when absent).
fn delivery_count(table: Option<&FieldTable>) -> u32 {
    let count = table.and_then(|table| {
        table
            .inner()
            .iter()
            .find(|(key, _)| key.as_str() == "x-delivery-count")
            .and_then(|(_, value)| match value {
                AMQPValue::LongLongInt(n) => Some(*n),
                AMQPValue::LongInt(n) => Some(i64::from(*n)),
                AMQPValue::LongUInt(n) => Some(i64::from(*n)),
                AMQPValue::ShortInt(n) => Some(i64::from(*n)),
                AMQPValue::ShortUInt(n) => Some(i64::from(*n)),
                AMQPValue::ShortShortInt(n) => Some(i64::from(*n)),
                AMQPValue::ShortShortUInt(n) => Some(i64::from(*n)),
                _ => None,
            })
    });
    count.map_or(0, |n| u32::try_from(n.max(0)).unwrap_or(u32::MAX))
}

/// Why `connection` is no longer open, if it is not.
fn connection_lost(which: &str, connection: &Connection) -> Option<BrokerError> {
    let status = connection.status();
    if status.connected() {
        return None;
    }
    let state = if status.errored() {
        "failed"
    } else if status.closed() || status.closing() {
        "closed"
    } else {
        "not connected"
    };
    Some(BrokerError::Protocol {
        operation: "connection",
        reason: format!("the {which} connection is {state}"),
    })
}

/// A number no other consumer of this process has.
fn next_consumer_serial() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

pub struct AmqpConsumer {
    broker: AmqpBroker,
    queue: String,
    /// Tells this consumer's deliveries from every other's, for acks with `multiple`.
    serial: u64,
    /// Consumed without acks: its deliveries are settled already.
    auto_ack: bool,
    /// Its deliveries are settled on it. Dropping the last handle would cancel the consumer:
    /// kept for the consumer's lifetime (and each unsettled delivery's).
    channel: Arc<Channel>,
    consumer: lapin::Consumer,
    /// The connection opened for this consumer alone ([`AmqpBroker::consume_apart`]),
    /// watched by [`AmqpConsumer::next`]: lapin does not always tell an idle consumer that
    /// its connection died.
    own_connection: Option<Connection>,
}

impl fmt::Debug for AmqpConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpConsumer")
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

impl AmqpConsumer {
    pub(crate) fn queue(&self) -> &str {
        &self.queue
    }

    pub(crate) async fn next(&mut self) -> Option<Result<Delivery, BrokerError>> {
        let next = match &self.own_connection {
            None => self.consumer.next().await?,
            Some(connection) => tokio::select! {
                next = self.consumer.next() => next?,
                lost = watch_connection("consumer's own", connection) => return Some(Err(lost)),
            },
        };
        let delivery = match next {
            Ok(delivery) => delivery,
            Err(err) => return Some(Err(protocol("basic.deliver")(err))),
        };
        let properties = &delivery.properties;
        Some(Ok(Delivery {
            message_id: properties
                .message_id()
                .as_ref()
                .map(|id| id.as_str().to_owned()),
            headers: from_field_table(properties.headers().as_ref()),
            user_id: properties
                .user_id()
                .as_ref()
                .map(|id| id.as_str().to_owned()),
            redelivered: delivery.redelivered,
            delivery_count: delivery_count(properties.headers().as_ref()),
            reply_to: properties
                .reply_to()
                .as_ref()
                .map(|queue| queue.as_str().to_owned()),
            settle: if self.auto_ack {
                Settle::Auto
            } else {
                Settle::Amqp(AmqpSettle {
                    broker: self.broker.clone(),
                    queue: self.queue.clone(),
                    consumer: self.serial,
                    tag: delivery.delivery_tag,
                    channel: Arc::clone(&self.channel),
                })
            },
            body: delivery.data,
        }))
    }
}

/// Resolves once `connection` (the `which` one) is no longer open.
async fn watch_connection(which: &str, connection: &Connection) -> BrokerError {
    loop {
        if let Some(lost) = connection_lost(which, connection) {
            return lost;
        }
        tokio::time::sleep(WATCH_INTERVAL).await;
    }
}

pub(crate) struct AmqpSettle {
    broker: AmqpBroker,
    queue: String,
    /// The consumer (and so the channel) the delivery came on, and its tag there.
    pub(crate) consumer: u64,
    pub(crate) tag: u64,
    /// Settled on the channel itself rather than through lapin's `Acker`, which hands each
    /// settle to lapin's internal task and spawns a task for it: two more wake-ups per ack,
    /// on every job (BENCHMARKS.md). A channel that closed meanwhile fails the settle, and the
    /// broker redelivers the message, as with an `Acker`.
    channel: Arc<Channel>,
}

impl fmt::Debug for AmqpSettle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpSettle")
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

impl AmqpSettle {
    /// Queues the ack on the channel, without waiting for it to be written
    /// ([`crate::start_and_forget`]): an ack lost with the connection is a redelivery, which
    /// every consumer handles anyway.
    pub(crate) fn ack(self) -> Result<(), BrokerError> {
        crate::start_and_forget([async {
            self.channel
                .basic_ack(self.tag, BasicAckOptions::default())
                .await
                .map_err(protocol("basic.ack"))
        }])
    }

    /// Acks this delivery and every earlier one of its consumer not settled yet: one frame,
    /// and on a quorum queue one log entry, for a whole batch.
    pub(crate) async fn ack_through(self) -> Result<(), BrokerError> {
        self.channel
            .basic_ack(self.tag, BasicAckOptions { multiple: true })
            .await
            .map_err(protocol("basic.ack"))
    }

    pub(crate) async fn requeue(self) -> Result<(), BrokerError> {
        let options = BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        };
        self.channel
            .basic_nack(self.tag, options)
            .await
            .map_err(protocol("basic.nack"))
    }

    /// Publishes a copy with the reason to the dead-letter exchange, then acks the original.
    /// If the copy cannot be published, rejects the original so that the broker's own
    /// dead-lettering (configured on every work queue) takes it, without the reason.
    pub(crate) async fn dead_letter(
        self,
        body: &[u8],
        message_id: Option<String>,
        headers: Headers,
    ) -> Result<(), BrokerError> {
        let message_id = message_id.unwrap_or_default();
        let copy = Outgoing::new(body, &message_id, &headers);
        match self
            .broker
            .publish_raw(&Resolved::dead_letter(&self.queue), copy)
            .await
        {
            Ok(()) => self.ack(),
            Err(err) => {
                tracing::error!(error = %err, queue = %self.queue, "Dead-letter copy failed; rejecting instead.");
                self.channel
                    .basic_reject(self.tag, BasicRejectOptions { requeue: false })
                    .await
                    .map_err(protocol("basic.reject"))
            }
        }
    }
}

/// What the broker's confirm of one message means.
fn check_confirmation(
    confirmation: Confirmation,
    exchange: &str,
    routing_key: &str,
) -> Result<(), BrokerError> {
    match confirmation {
        // A returned (unroutable) mandatory message is still acked: look inside.
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_)) => Err(BrokerError::Unroutable {
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
        }),
        Confirmation::Nack(_) => Err(BrokerError::NotConfirmed {
            exchange: exchange.to_owned(),
            reason: "the broker nacked the message".into(),
        }),
        Confirmation::NotRequested => Err(BrokerError::NotConfirmed {
            exchange: exchange.to_owned(),
            reason: "publisher confirms are not enabled on the channel".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::url_user;

    #[test]
    fn the_user_comes_from_the_url_percent_decoded() {
        assert_eq!(
            url_user("amqp://pipelines-dispatcher:s3cret@host:5672/%2f").as_deref(),
            Some("pipelines-dispatcher")
        );
        assert_eq!(
            url_user("amqps://ops%40acme:pw@host/vhost").as_deref(),
            Some("ops@acme")
        );
        assert_eq!(url_user("amqp://host:5672/%2f"), None);
    }
}
