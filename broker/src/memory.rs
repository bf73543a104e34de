//! The in-process broker behind embedded mode: bound queues, prefetch, manual acks, requeues,
//! a delivery limit, dead-lettering, and redelivery of whatever a vanished consumer held.
//!
//! It mirrors the RabbitMQ semantics the components rely on, so that embedded mode exercises
//! the same code paths as a distributed deployment. It is not a test double: the broker tests
//! run against the real RabbitMQ.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;
use uuid::Uuid;

use crate::topology::{self, DEAD_LETTER_EXCHANGE, DELIVERY_LIMIT, STATUS_EXCHANGE, Topology};
use crate::{BrokerError, Delivery, Headers, Outgoing, REASON_HEADER, Route, Settle};

/// The most ready messages one queue holds; a publish beyond it is not confirmed.
pub(crate) const MAX_QUEUE_LENGTH: usize = 100_000;

#[derive(Debug, Clone, Default)]
pub struct MemoryBroker {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    bindings: Vec<Binding>,
    queues: HashMap<String, Queue>,
    consumers: HashMap<u64, ConsumerState>,
    next_tag: u64,
    next_consumer: u64,
}

#[derive(Debug)]
struct Binding {
    exchange: String,
    key: String,
    queue: String,
    topic: bool,
}

#[derive(Debug, Default)]
struct Queue {
    ready: VecDeque<Stored>,
    /// Delivered and not yet settled, by delivery tag, with the consumer holding it.
    unacked: BTreeMap<u64, (u64, Stored)>,
    notify: Arc<Notify>,
    dead_letter: bool,
    /// Deleted with its consumer (a run follower's private queue).
    exclusive: bool,
}

#[derive(Debug, Clone)]
struct Stored {
    body: Vec<u8>,
    message_id: String,
    headers: Headers,
    reply_to: Option<String>,
    deliveries: u32,
}

#[derive(Debug)]
struct ConsumerState {
    queue: String,
    prefetch: usize,
    held: usize,
}

impl MemoryBroker {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters more than stopping embedded mode would, so keep going with the data.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn declare_topology(&self, topology: &Topology) {
        let mut state = self.lock();
        for spec in topology.work_queues() {
            state.declare_queue(&spec.name, true, false);
            state.bind(spec.exchange, &spec.routing_key, &spec.name, false);
            state.declare_queue(&spec.dead_letter_queue, false, false);
            state.bind(
                DEAD_LETTER_EXCHANGE,
                &spec.name,
                &spec.dead_letter_queue,
                false,
            );
        }
    }

    pub(crate) fn publish(
        &self,
        route: Route<'_>,
        message: Outgoing<'_>,
    ) -> Result<(), BrokerError> {
        let topology::Resolved {
            exchange,
            routing_key,
            mandatory,
            ..
        } = topology::resolve(route);
        let stored = Stored {
            body: message.body.to_vec(),
            message_id: message.message_id.to_owned(),
            headers: message.headers.clone(),
            reply_to: message.reply_to.map(str::to_owned),
            deliveries: 0,
        };
        let mut state = self.lock();
        let targets = state.targets(exchange, &routing_key);
        // Bounded like a RabbitMQ queue with `overflow = reject-publish`: the publisher is told
        // (not confirmed, so it retries later), nothing already queued is dropped.
        if let Some(full) = state.full_target(&targets) {
            return Err(BrokerError::NotConfirmed {
                exchange: exchange.to_owned(),
                reason: format!(
                    "queue {full:?} holds {MAX_QUEUE_LENGTH} messages, the in-memory broker's limit"
                ),
            });
        }
        state.deliver(&targets, stored);
        drop(state);
        if targets.is_empty() && mandatory {
            return Err(BrokerError::Unroutable {
                exchange: exchange.to_owned(),
                routing_key,
            });
        }
        Ok(())
    }

    pub(crate) fn consume(
        &self,
        queue: &str,
        prefetch: u16,
    ) -> Result<MemoryConsumer, BrokerError> {
        let mut state = self.lock();
        let notify = state
            .queues
            .get(queue)
            .ok_or_else(|| BrokerError::UnknownQueue(queue.to_owned()))?
            .notify
            .clone();
        state.next_consumer += 1;
        let id = state.next_consumer;
        state.consumers.insert(
            id,
            ConsumerState {
                queue: queue.to_owned(),
                prefetch: usize::from(prefetch.max(1)),
                held: 0,
            },
        );
        Ok(MemoryConsumer {
            broker: self.clone(),
            id,
            queue: queue.to_owned(),
            notify,
        })
    }

    pub(crate) fn follow_run(&self, run_id: Uuid) -> Result<MemoryConsumer, BrokerError> {
        let queue = format!("follow.{run_id}.{}", Uuid::new_v4());
        {
            let mut state = self.lock();
            state.declare_queue(&queue, false, true);
            state.bind(
                STATUS_EXCHANGE,
                &topology::status_routing_key(run_id),
                &queue,
                true,
            );
        }
        self.consume(&queue, 1000)
    }

    pub(crate) fn queue_depth(&self, queue: &str) -> Result<u32, BrokerError> {
        let state = self.lock();
        let queue_state = state
            .queues
            .get(queue)
            .ok_or_else(|| BrokerError::UnknownQueue(queue.to_owned()))?;
        Ok(u32::try_from(queue_state.ready.len()).unwrap_or(u32::MAX))
    }

    pub(crate) fn reply_queue(&self) -> Result<MemoryConsumer, BrokerError> {
        let queue = format!(
            "{}{}",
            topology::REPLY_QUEUE_PREFIX,
            Uuid::new_v4().simple()
        );
        self.lock().declare_queue(&queue, false, true);
        self.consume(&queue, 1000)
    }

    /// Hands the consumer its next message if its prefetch window allows.
    fn take(&self, consumer: u64) -> Option<Delivery> {
        let mut state = self.lock();
        let state = &mut *state;
        let holder = state.consumers.get_mut(&consumer)?;
        if holder.held >= holder.prefetch {
            return None;
        }
        let queue = state.queues.get_mut(&holder.queue)?;
        let mut stored = queue.ready.pop_front()?;
        stored.deliveries += 1;
        holder.held += 1;
        state.next_tag += 1;
        let tag = state.next_tag;
        let delivery = Delivery {
            body: stored.body.clone(),
            message_id: Some(stored.message_id.clone()),
            headers: stored.headers.clone(),
            user_id: None,
            redelivered: stored.deliveries > 1,
            delivery_count: stored.deliveries - 1,
            reply_to: stored.reply_to.clone(),
            settle: Settle::Memory(MemorySettle {
                broker: self.clone(),
                queue: holder.queue.clone(),
                tag,
            }),
        };
        queue.unacked.insert(tag, (consumer, stored));
        Some(delivery)
    }

    fn settle(&self, queue: &str, tag: u64, how: Settlement) -> Result<(), BrokerError> {
        let mut state = self.lock();
        let (consumer, stored) = state
            .queues
            .get_mut(queue)
            .and_then(|q| q.unacked.remove(&tag))
            .ok_or(BrokerError::StaleDelivery(tag))?;
        if let Some(holder) = state.consumers.get_mut(&consumer) {
            holder.held = holder.held.saturating_sub(1);
        }
        match how {
            Settlement::Ack => {}
            Settlement::Requeue => state.give_back(queue, vec![stored]),
            Settlement::DeadLetter(headers) => {
                state.dead_letter(queue, Stored { headers, ..stored });
            }
        }
        state.wake(queue);
        Ok(())
    }

    fn release(&self, consumer: u64) {
        let mut state = self.lock();
        let Some(holder) = state.consumers.remove(&consumer) else {
            return;
        };
        let Some(queue) = state.queues.get_mut(&holder.queue) else {
            return;
        };
        if queue.exclusive {
            state.queues.remove(&holder.queue);
            state.bindings.retain(|b| b.queue != holder.queue);
            return;
        }
        let held: Vec<u64> = queue
            .unacked
            .iter()
            .filter(|(_, (owner, _))| *owner == consumer)
            .map(|(tag, _)| *tag)
            .collect();
        let returned = held
            .into_iter()
            .filter_map(|tag| queue.unacked.remove(&tag).map(|(_, stored)| stored))
            .collect();
        state.give_back(&holder.queue, returned);
        state.wake(&holder.queue);
    }
}

enum Settlement {
    Ack,
    Requeue,
    DeadLetter(Headers),
}

impl State {
    fn declare_queue(&mut self, name: &str, dead_letter: bool, exclusive: bool) {
        self.queues.entry(name.to_owned()).or_insert_with(|| Queue {
            dead_letter,
            exclusive,
            ..Queue::default()
        });
    }

    fn bind(&mut self, exchange: &str, key: &str, queue: &str, topic: bool) {
        let exists = self
            .bindings
            .iter()
            .any(|b| b.exchange == exchange && b.key == key && b.queue == queue);
        if !exists {
            self.bindings.push(Binding {
                exchange: exchange.to_owned(),
                key: key.to_owned(),
                queue: queue.to_owned(),
                topic,
            });
        }
    }

    /// The first of `targets` that holds [`MAX_QUEUE_LENGTH`] ready messages already.
    fn full_target<'t>(&self, targets: &'t [String]) -> Option<&'t String> {
        targets.iter().find(|target| {
            self.queues
                .get(*target)
                .is_some_and(|queue| queue.ready.len() >= MAX_QUEUE_LENGTH)
        })
    }

    /// Appends the message to every queue bound to `exchange` for `key`; returns how many.
    fn route(&mut self, exchange: &str, key: &str, stored: Stored) -> usize {
        let targets = self.targets(exchange, key);
        self.deliver(&targets, stored);
        targets.len()
    }

    /// Appends the message to each of `targets`.
    fn deliver(&mut self, targets: &[String], stored: Stored) {
        for target in targets {
            if let Some(queue) = self.queues.get_mut(target) {
                queue.ready.push_back(stored.clone());
            }
            self.wake(target);
        }
    }

    /// The queues bound to `exchange` for `key`.
    fn targets(&self, exchange: &str, key: &str) -> Vec<String> {
        // The default exchange: every queue is bound under its own name.
        let direct = (exchange.is_empty() && self.queues.contains_key(key)).then(|| key.to_owned());
        let targets: Vec<String> = self
            .bindings
            .iter()
            .filter(|b| b.exchange == exchange)
            .filter(|b| {
                if b.topic {
                    topology::topic_matches(&b.key, key)
                } else {
                    b.key == key
                }
            })
            .map(|b| b.queue.clone())
            .chain(direct)
            .collect();
        targets
    }

    /// Puts returned messages back at the head of the queue, in their original order, or
    /// dead-letters those that reached the delivery limit.
    fn give_back(&mut self, queue_name: &str, returned: Vec<Stored>) {
        let mut requeue = Vec::new();
        for stored in returned {
            if stored.deliveries >= DELIVERY_LIMIT {
                let mut headers = stored.headers.clone();
                headers.insert(
                    REASON_HEADER.to_owned(),
                    format!("delivery limit of {DELIVERY_LIMIT} reached"),
                );
                self.dead_letter(queue_name, Stored { headers, ..stored });
            } else {
                requeue.push(stored);
            }
        }
        if let Some(queue) = self.queues.get_mut(queue_name) {
            for stored in requeue.into_iter().rev() {
                queue.ready.push_front(stored);
            }
        }
    }

    fn dead_letter(&mut self, queue_name: &str, stored: Stored) {
        let has_dead_letter_queue = self.queues.get(queue_name).is_some_and(|q| q.dead_letter);
        if has_dead_letter_queue {
            self.route(
                DEAD_LETTER_EXCHANGE,
                queue_name,
                Stored {
                    deliveries: 0,
                    ..stored
                },
            );
        }
    }

    fn wake(&self, queue: &str) {
        if let Some(queue) = self.queues.get(queue) {
            queue.notify.notify_waiters();
        }
    }
}

#[derive(Debug)]
pub struct MemoryConsumer {
    broker: MemoryBroker,
    id: u64,
    queue: String,
    notify: Arc<Notify>,
}

impl MemoryConsumer {
    pub(crate) fn queue(&self) -> &str {
        &self.queue
    }

    pub(crate) async fn next(&mut self) -> Option<Delivery> {
        loop {
            // Register interest before looking, so a publish between the look and the wait
            // still wakes us.
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(delivery) = self.broker.take(self.id) {
                return Some(delivery);
            }
            if !self.broker.lock().queues.contains_key(&self.queue) {
                return None;
            }
            notified.await;
        }
    }
}

impl Drop for MemoryConsumer {
    fn drop(&mut self) {
        self.broker.release(self.id);
    }
}

#[derive(Debug)]
pub(crate) struct MemorySettle {
    broker: MemoryBroker,
    queue: String,
    tag: u64,
}

impl MemorySettle {
    pub(crate) fn ack(self) -> Result<(), BrokerError> {
        self.broker.settle(&self.queue, self.tag, Settlement::Ack)
    }

    pub(crate) fn requeue(self) -> Result<(), BrokerError> {
        self.broker
            .settle(&self.queue, self.tag, Settlement::Requeue)
    }

    pub(crate) fn dead_letter(self, headers: Headers) -> Result<(), BrokerError> {
        self.broker
            .settle(&self.queue, self.tag, Settlement::DeadLetter(headers))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::Broker;
    use proto_types::ExecutorRole;

    use crate::topology::{CHANGES_QUEUE, dead_letter_queue, jobs_queue};
    use crate::{
        DEAD_LETTER_KEEPS_HEADER_BYTES, DEAD_LETTER_REASON_BYTES, HEADERS_LEFT_OUT_HEADER,
    };

    fn broker() -> Broker {
        let broker = Broker::in_memory();
        let Broker::Memory(memory) = &broker else {
            unreachable!()
        };
        memory.declare_topology(&Topology::new(["dev".to_owned()]));
        broker
    }

    async fn publish(broker: &Broker, route: Route<'_>, body: &[u8]) {
        let headers = Headers::new();
        broker
            .publish(route, Outgoing::new(body, "m", &headers))
            .await
            .expect("publish");
    }

    async fn next(consumer: &mut crate::Consumer) -> Delivery {
        tokio::time::timeout(Duration::from_secs(5), consumer.next())
            .await
            .expect("a delivery within 5 s")
            .expect("consumer open")
            .expect("delivery")
    }

    fn is_idle(consumer: &mut crate::Consumer) -> bool {
        let crate::Consumer::Memory(memory) = consumer else {
            unreachable!()
        };
        memory.broker.take(memory.id).is_none()
    }

    #[tokio::test]
    async fn a_full_queue_refuses_the_next_publish_and_keeps_what_it_holds() {
        let broker = broker();
        for _ in 0..MAX_QUEUE_LENGTH {
            publish(&broker, Route::Changes, b"x").await;
        }
        let headers = Headers::new();
        let refused = broker
            .publish(
                Route::Changes,
                Outgoing::new(b"one too many", "m", &headers),
            )
            .await
            .unwrap_err();
        assert!(refused.is_transient(), "{refused}");
        assert!(
            refused.to_string().contains("holds 100000 messages"),
            "{refused}"
        );
        let mut consumer = broker.consume(CHANGES_QUEUE, 10).await.unwrap();
        let first = next(&mut consumer).await;
        assert_eq!(first.body, b"x");
        first.ack().await.unwrap();
        // Room again.
        publish(&broker, Route::Changes, b"y").await;
    }

    #[tokio::test]
    async fn publish_to_an_unbound_key_is_an_error() {
        let broker = broker();
        let headers = Headers::new();
        let message = Outgoing::new(b"x", "m", &headers);
        let err = broker
            .publish(
                Route::Jobs {
                    account: "nobody",
                    role: ExecutorRole::Apply,
                },
                message,
            )
            .await;
        assert!(
            matches!(err, Err(BrokerError::Unroutable { .. })),
            "{err:?}"
        );
        // Status is fire-and-forget: nobody following is fine.
        let status = broker
            .publish(
                Route::Status {
                    run_id: Uuid::new_v4(),
                },
                message,
            )
            .await;
        assert!(status.is_ok());
    }

    #[tokio::test]
    async fn prefetch_limits_unacked_deliveries_and_ack_frees_the_window() {
        let broker = broker();
        for body in [b"1", b"2"] {
            publish(
                &broker,
                Route::Jobs {
                    account: "dev",
                    role: ExecutorRole::Apply,
                },
                body,
            )
            .await;
        }
        let mut consumer = broker
            .consume(&jobs_queue("dev", ExecutorRole::Apply), 1)
            .await
            .unwrap();
        let first = next(&mut consumer).await;
        assert_eq!(first.body, b"1");
        assert!(is_idle(&mut consumer), "second delivery despite prefetch 1");
        first.ack().await.unwrap();
        assert_eq!(next(&mut consumer).await.body, b"2");
    }

    #[tokio::test]
    async fn requeued_messages_come_back_first_and_marked_redelivered() {
        let broker = broker();
        for body in [b"1", b"2"] {
            publish(&broker, Route::Changes, body).await;
        }
        let mut consumer = broker.consume(CHANGES_QUEUE, 10).await.unwrap();
        let first = next(&mut consumer).await;
        assert!(!first.redelivered);
        first.requeue().await.unwrap();
        let again = next(&mut consumer).await;
        assert_eq!(
            (again.body.as_slice(), again.redelivered),
            (&b"1"[..], true)
        );
    }

    #[tokio::test]
    async fn a_dropped_consumer_returns_what_it_held_and_late_acks_are_stale() {
        let broker = broker();
        publish(&broker, Route::Changes, b"1").await;
        let mut consumer = broker.consume(CHANGES_QUEUE, 10).await.unwrap();
        let held = next(&mut consumer).await;
        drop(consumer);
        assert!(matches!(
            held.ack().await,
            Err(BrokerError::StaleDelivery(_))
        ));
        let mut other = broker.consume(CHANGES_QUEUE, 10).await.unwrap();
        let again = next(&mut other).await;
        assert_eq!(
            (again.body.as_slice(), again.redelivered),
            (&b"1"[..], true)
        );
    }

    #[tokio::test]
    async fn dead_lettered_messages_carry_their_reason() {
        let broker = broker();
        publish(&broker, Route::Changes, b"garbage").await;
        let mut consumer = broker.consume(CHANGES_QUEUE, 10).await.unwrap();
        next(&mut consumer)
            .await
            .dead_letter("cannot decode")
            .await
            .unwrap();
        let mut dead = broker
            .consume(&dead_letter_queue(CHANGES_QUEUE), 10)
            .await
            .unwrap();
        let delivery = next(&mut dead).await;
        assert_eq!(delivery.body, b"garbage");
        assert_eq!(
            delivery.headers.get(REASON_HEADER).map(String::as_str),
            Some("cannot decode")
        );
    }

    #[tokio::test]
    async fn a_dead_letter_keeps_headers_up_to_its_limit_none_of_the_senders_own_and_a_cut_reason()
    {
        let broker = broker();
        let padded = |bytes: usize| {
            Headers::from([
                ("x-pad".to_owned(), "p".repeat(bytes - "x-pad".len())),
                ("x-pipelines-reason".to_owned(), "forged".to_owned()),
            ])
        };
        for bytes in [
            DEAD_LETTER_KEEPS_HEADER_BYTES,
            DEAD_LETTER_KEEPS_HEADER_BYTES + 1,
        ] {
            let headers = padded(bytes);
            let message = Outgoing::new(b"garbage", "m", &headers);
            broker.publish(Route::Changes, message).await.unwrap();
        }
        let mut consumer = broker.consume(CHANGES_QUEUE, 10).await.unwrap();
        // A reason longer than a dead letter keeps, cut inside a two-byte character.
        let reason = format!("x{}", "é".repeat(DEAD_LETTER_REASON_BYTES));
        for _ in 0..2 {
            next(&mut consumer)
                .await
                .dead_letter(&reason)
                .await
                .unwrap();
        }
        let mut dead = broker
            .consume(&dead_letter_queue(CHANGES_QUEUE), 10)
            .await
            .unwrap();
        let kept = next(&mut dead).await.headers;
        let left_out = next(&mut dead).await.headers;
        assert_eq!(
            kept["x-pad"].len(),
            DEAD_LETTER_KEEPS_HEADER_BYTES - "x-pad".len()
        );
        assert!(!kept.contains_key(HEADERS_LEFT_OUT_HEADER));
        assert_eq!(
            left_out.keys().collect::<Vec<_>>(),
            [HEADERS_LEFT_OUT_HEADER, REASON_HEADER]
        );
        assert_eq!(
            left_out[HEADERS_LEFT_OUT_HEADER],
            "16385 bytes of headers, more than the 16384 a dead letter keeps"
        );
        for headers in [&kept, &left_out] {
            let cut = &headers[REASON_HEADER];
            assert_eq!(cut.len(), DEAD_LETTER_REASON_BYTES - 1, "{}", cut.len());
            assert!(reason.starts_with(cut.as_str()));
        }
    }

    #[tokio::test]
    async fn a_message_requeued_past_the_delivery_limit_is_dead_lettered() {
        let broker = broker();
        publish(&broker, Route::Changes, b"poison").await;
        let mut consumer = broker.consume(CHANGES_QUEUE, 1).await.unwrap();
        for count in 0..DELIVERY_LIMIT {
            let delivery = next(&mut consumer).await;
            assert_eq!(delivery.delivery_count, count);
            assert_eq!(delivery.is_last_chance(), count + 1 == DELIVERY_LIMIT);
            delivery.requeue().await.unwrap();
        }
        assert!(is_idle(&mut consumer));
        let mut dead = broker
            .consume(&dead_letter_queue(CHANGES_QUEUE), 10)
            .await
            .unwrap();
        assert_eq!(next(&mut dead).await.body, b"poison");
    }

    #[tokio::test]
    async fn replies_reach_the_requesters_private_queue_and_late_ones_are_dropped() {
        let broker = broker();
        let mut replies = broker.reply_queue().await.unwrap();
        assert!(
            crate::is_reply_queue(replies.queue()),
            "{}",
            replies.queue()
        );
        let headers = Headers::new();
        let request = Outgoing {
            reply_to: Some(replies.queue()),
            ..Outgoing::new(b"request", "r", &headers)
        };
        broker.publish(Route::Changes, request).await.unwrap();
        let mut changes = broker.consume(CHANGES_QUEUE, 10).await.unwrap();
        let reply_to = next(&mut changes).await.reply_to.expect("reply_to travels");
        publish(&broker, Route::Reply { queue: &reply_to }, b"answer").await;
        assert_eq!(next(&mut replies).await.body, b"answer");
        drop(replies);
        publish(&broker, Route::Reply { queue: &reply_to }, b"late").await;
        assert!(
            !broker_has_queue(&broker, &reply_to),
            "the private queue outlived its consumer"
        );
    }

    fn broker_has_queue(broker: &Broker, queue: &str) -> bool {
        let Broker::Memory(memory) = broker else {
            unreachable!()
        };
        memory.lock().queues.contains_key(queue)
    }

    #[tokio::test]
    async fn a_run_follower_sees_only_its_run_and_a_waiting_consumer_wakes_up() {
        let broker = broker();
        let (mine, other) = (Uuid::new_v4(), Uuid::new_v4());
        let mut follower = broker.follow_run(mine).await.unwrap();
        let waiting = tokio::spawn(async move { next(&mut follower).await.body });
        tokio::task::yield_now().await;
        publish(&broker, Route::Status { run_id: other }, b"other").await;
        publish(&broker, Route::Status { run_id: mine }, b"mine").await;
        assert_eq!(waiting.await.unwrap(), b"mine");
    }
}
