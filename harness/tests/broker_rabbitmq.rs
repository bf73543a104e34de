//! The RabbitMQ adapter against the real broker: confirms, quorum queues, acks, requeues,
//! prefetch, dead-lettering and run followers. Each test has its own vhost.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: fail loudly.

use std::time::Duration;

use broker::topology::{CHANGES_QUEUE, dead_letter_queue, jobs_queue};
use broker::{
    Broker, BrokerError, BrokerTimeouts, Consumer, Delivery, Headers, HeldAcks, Outgoing,
    REASON_HEADER, Route, Topology,
};
use harness::poll_until;
use harness::rabbit::{self, Vhost, rabbitmqctl};
use proto_types::ExecutorRole;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(10);

async fn connect(vhost: &Vhost) -> Broker {
    let broker = Broker::connect(&vhost.url, "broker-test")
        .await
        .expect("connect");
    broker
        .declare_topology(&Topology::new(["dev".to_owned()]))
        .await
        .expect("declare");
    broker
}

async fn publish(
    broker: &Broker,
    route: Route<'_>,
    body: &[u8],
    id: &str,
) -> Result<(), BrokerError> {
    let mut headers = Headers::new();
    headers.insert("traceparent".into(), "00-abc-def-01".into());
    broker
        .publish(route, Outgoing::new(body, id, &headers))
        .await
}

async fn next(consumer: &mut Consumer) -> Delivery {
    tokio::time::timeout(WAIT, consumer.next())
        .await
        .expect("a delivery in time")
        .expect("consumer open")
        .expect("delivery ok")
}

/// `rabbitmqctl list_queues` of the vhost: one line per queue, `name` then `columns`.
fn list_queues(vhost: &Vhost, columns: &[&str]) -> String {
    let mut args = vec![
        "list_queues",
        "-p",
        &vhost.name,
        "--no-table-headers",
        "name",
    ];
    args.extend_from_slice(columns);
    rabbitmqctl(&args)
}

/// (ready, unacked) of a queue, read from the broker itself.
fn counts(vhost: &Vhost, queue: &str) -> (u64, u64) {
    let listing = list_queues(vhost, &["messages_ready", "messages_unacknowledged"]);
    listing
        .lines()
        .find_map(|line| {
            let parts: Vec<&str> = line.split_whitespace().collect();
            (parts.first() == Some(&queue))
                .then(|| (parts[1].parse().unwrap(), parts[2].parse().unwrap()))
        })
        .unwrap_or_else(|| panic!("queue {queue} not listed: {listing}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn work_queues_are_durable_quorum_queues_with_dead_letter_queues() {
    let vhost = rabbit::vhost();
    let broker = connect(&vhost).await;
    let listing = list_queues(&vhost, &["type", "durable"]);
    for queue in [
        CHANGES_QUEUE,
        "pipelines.job-events",
        "jobs.dev.apply",
        "dead.jobs.dev.apply",
        "dead.pipelines.changes",
    ] {
        let line = listing
            .lines()
            .find(|l| l.split_whitespace().next() == Some(queue))
            .unwrap_or_else(|| panic!("{queue} missing: {listing}"));
        assert!(line.contains("quorum") && line.contains("true"), "{line}");
    }
    // The one exception: claims and heartbeats, which their senders repeat, live in a classic
    // queue that goes with its node (the dispatcher declares it again), as transient messages.
    let claims = listing
        .lines()
        .find(|l| l.split_whitespace().next() == Some("pipelines.claims"))
        .unwrap_or_else(|| panic!("pipelines.claims missing: {listing}"));
    assert!(
        claims.contains("classic") && claims.contains("false"),
        "{claims}"
    );
    // Declaring twice is harmless: every component declares at start-up.
    broker
        .declare_topology(&Topology::new(["dev".to_owned()]))
        .await
        .expect("redeclare");
    broker.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_confirmed_message_arrives_with_its_id_and_headers_and_is_gone_once_acked() {
    let vhost = rabbit::vhost();
    let broker = connect(&vhost).await;
    publish(
        &broker,
        Route::Jobs {
            account: "dev",
            role: ExecutorRole::Apply,
        },
        b"job-1",
        "id-1",
    )
    .await
    .expect("confirmed");
    let mut consumer = broker
        .consume(&jobs_queue("dev", ExecutorRole::Apply), 1)
        .await
        .unwrap();
    let delivery = next(&mut consumer).await;
    assert_eq!(delivery.body, b"job-1");
    assert_eq!(delivery.message_id.as_deref(), Some("id-1"));
    assert_eq!(
        delivery.headers.get("traceparent").map(String::as_str),
        Some("00-abc-def-01")
    );
    assert!(!delivery.redelivered);
    delivery.ack().await.unwrap();
    poll_until(WAIT, "the ack to empty jobs.dev.apply", || {
        (counts(&vhost, "jobs.dev.apply") == (0, 0)).then_some(())
    });
    broker.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unroutable_publish_is_an_error_not_a_silent_drop() {
    let vhost = rabbit::vhost();
    let broker = connect(&vhost).await;
    let err = publish(
        &broker,
        Route::Jobs {
            account: "nobody",
            role: ExecutorRole::Apply,
        },
        b"x",
        "id",
    )
    .await
    .unwrap_err();
    assert!(matches!(err, BrokerError::Unroutable { .. }), "{err:?}");
    // A run status nobody follows is fine.
    publish(
        &broker,
        Route::Status {
            run_id: Uuid::new_v4(),
        },
        b"x",
        "id",
    )
    .await
    .expect("status is not mandatory");
    broker.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn prefetch_one_holds_back_the_second_message_until_the_first_is_acked() {
    let vhost = rabbit::vhost();
    let broker = connect(&vhost).await;
    for body in [b"1", b"2"] {
        publish(
            &broker,
            Route::Jobs {
                account: "dev",
                role: ExecutorRole::Apply,
            },
            body,
            "id",
        )
        .await
        .unwrap();
    }
    let mut consumer = broker
        .consume(&jobs_queue("dev", ExecutorRole::Apply), 1)
        .await
        .unwrap();
    let first = next(&mut consumer).await;
    poll_until(WAIT, "one ready and one unacked", || {
        (counts(&vhost, "jobs.dev.apply") == (1, 1)).then_some(())
    });
    first.ack().await.unwrap();
    assert_eq!(next(&mut consumer).await.body, b"2");
    broker.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn requeued_and_abandoned_deliveries_come_back_redelivered() {
    let vhost = rabbit::vhost();
    let broker = connect(&vhost).await;
    publish(&broker, Route::Changes, b"event", "id")
        .await
        .unwrap();
    let mut consumer = broker.consume(CHANGES_QUEUE, 1).await.unwrap();
    next(&mut consumer).await.requeue().await.unwrap();
    let again = next(&mut consumer).await;
    assert!(again.redelivered);
    // A consumer that goes away without settling (a crashed worker) gives the message back.
    drop(again);
    drop(consumer);
    let other = Broker::connect(&vhost.url, "broker-test-2").await.unwrap();
    let mut consumer = other.consume(CHANGES_QUEUE, 1).await.unwrap();
    let third = next(&mut consumer).await;
    assert_eq!(
        (third.body.as_slice(), third.redelivered),
        (&b"event"[..], true)
    );
    third.ack().await.unwrap();
    broker.close().await;
    other.close().await;
}

/// Workers count on it: a message whose deliveries keep ending without an ack is dead-lettered
/// by RabbitMQ only after a delivery that said it was the last chance.
#[tokio::test(flavor = "multi_thread")]
async fn deliveries_are_counted_and_the_broker_dead_letters_only_after_the_last_chance() {
    let vhost = rabbit::vhost();
    let broker = connect(&vhost).await;
    publish(&broker, Route::Changes, b"crashes everyone", "poison-2")
        .await
        .unwrap();
    let mut consumer = broker.consume(CHANGES_QUEUE, 1).await.unwrap();
    let mut dead = broker
        .consume(&dead_letter_queue(CHANGES_QUEUE), 1)
        .await
        .unwrap();
    let mut seen: Vec<(u32, bool)> = Vec::new();
    let mut delivery = next(&mut consumer).await;
    loop {
        seen.push((delivery.delivery_count, delivery.is_last_chance()));
        assert!(seen.len() <= 50, "never dead-lettered: {seen:?}");
        delivery.requeue().await.unwrap();
        tokio::select! {
            again = next(&mut consumer) => delivery = again,
            dead_letter = next(&mut dead) => {
                assert_eq!(dead_letter.body, b"crashes everyone");
                dead_letter.ack().await.unwrap();
                break;
            }
        }
    }
    let counts: Vec<u32> = seen.iter().map(|(count, _)| *count).collect();
    let expected: Vec<u32> = (0..).take(seen.len()).collect();
    assert_eq!(counts, expected, "x-delivery-count counts every delivery");
    let last_chance = seen
        .iter()
        .position(|(_, last)| *last)
        .unwrap_or_else(|| panic!("dead-lettered without a last-chance delivery: {seen:?}"));
    // RabbitMQ 3.10 allows one delivery more than the limit counts; the memory broker none.
    assert!(
        seen.len() - last_chance <= 2,
        "the last chance came too early: {seen:?}"
    );
    assert!(
        seen.len() >= usize::try_from(broker::topology::DELIVERY_LIMIT).unwrap(),
        "dead-lettered before the delivery limit: {seen:?}"
    );
    broker.close().await;
}

/// Services rebuild everything when `lost` resolves: it must, even while every consumer sits
/// idle (lapin does not always wake them).
#[tokio::test(flavor = "multi_thread")]
async fn a_broker_whose_connections_the_server_closes_knows_it_is_lost() {
    let vhost = rabbit::vhost();
    let broker = connect(&vhost).await;
    let _idle = broker.consume(CHANGES_QUEUE, 1).await.unwrap();
    rabbitmqctl(&[
        "close_all_connections",
        "--vhost",
        &vhost.name,
        "test: the server closes",
    ]);
    let lost = tokio::time::timeout(WAIT, broker.lost())
        .await
        .expect("the loss is noticed");
    assert!(lost.is_transient(), "{lost}");
    assert!(lost.to_string().contains("connection is"), "{lost}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_lettered_message_lands_in_its_dead_letter_queue_with_the_reason() {
    let vhost = rabbit::vhost();
    let broker = connect(&vhost).await;
    publish(&broker, Route::Changes, b"garbage", "poison-1")
        .await
        .unwrap();
    let mut consumer = broker.consume(CHANGES_QUEUE, 1).await.unwrap();
    next(&mut consumer)
        .await
        .dead_letter("undecodable change event: empty")
        .await
        .unwrap();
    let mut dead = broker
        .consume(&dead_letter_queue(CHANGES_QUEUE), 1)
        .await
        .unwrap();
    let delivery = next(&mut dead).await;
    assert_eq!(delivery.body, b"garbage");
    assert_eq!(delivery.message_id.as_deref(), Some("poison-1"));
    assert_eq!(
        delivery.headers.get(REASON_HEADER).map(String::as_str),
        Some("undecodable change event: empty")
    );
    delivery.ack().await.unwrap();
    poll_until(WAIT, "the changes queue to drain", || {
        (counts(&vhost, CHANGES_QUEUE) == (0, 0)).then_some(())
    });
    broker.close().await;
}

/// The dispatcher settles a batch whole: dead letters one by one, then one ack with
/// `multiple` per consumer. Every message must be settled exactly as decided, and a delivery
/// of another consumer must not be swept up by it.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_acked_at_once_settles_every_delivery_but_the_dead_letter_and_no_other_consumers() {
    let vhost = rabbit::vhost();
    let broker = connect(&vhost).await;
    for i in 0..10 {
        publish(
            &broker,
            Route::Changes,
            format!("event {i}").as_bytes(),
            &format!("id-{i}"),
        )
        .await
        .unwrap();
    }
    let mut consumer = broker.consume(CHANGES_QUEUE, 6).await.unwrap();
    let mut batch = Vec::new();
    for _ in 0..6 {
        batch.push(next(&mut consumer).await);
    }
    // A second consumer (its own channel) holds the rest, unsettled.
    let mut other = broker.consume(CHANGES_QUEUE, 4).await.unwrap();
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(next(&mut other).await);
    }
    let poison = batch.remove(2);
    poison
        .dead_letter("undecodable change event: test")
        .await
        .unwrap();
    broker::ack_all(batch).await.unwrap();
    poll_until(WAIT, "the batch to be settled", || {
        (counts(&vhost, CHANGES_QUEUE) == (0, 4)).then_some(())
    });
    assert_eq!(counts(&vhost, &dead_letter_queue(CHANGES_QUEUE)), (1, 0));
    // The other consumer's deliveries were not acked with the batch: dropped unsettled, they
    // come back.
    drop(held);
    drop(other);
    drop(consumer);
    let again = Broker::connect(&vhost.url, "broker-test-2").await.unwrap();
    let mut consumer = again.consume(CHANGES_QUEUE, 10).await.unwrap();
    let mut back = Vec::new();
    for _ in 0..4 {
        let delivery = next(&mut consumer).await;
        assert!(delivery.redelivered, "{:?} came back", delivery.message_id);
        back.push(delivery);
    }
    broker::ack_all(back).await.unwrap();
    poll_until(WAIT, "the queue to drain", || {
        (counts(&vhost, CHANGES_QUEUE) == (0, 0)).then_some(())
    });
    broker.close().await;
    again.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_follower_receives_only_its_own_runs_statuses() {
    let vhost = rabbit::vhost();
    let broker = connect(&vhost).await;
    let (mine, other) = (Uuid::new_v4(), Uuid::new_v4());
    let mut follower = broker.follow_run(mine).await.unwrap();
    publish(&broker, Route::Status { run_id: other }, b"other", "1")
        .await
        .unwrap();
    publish(&broker, Route::Status { run_id: mine }, b"mine", "2")
        .await
        .unwrap();
    assert_eq!(next(&mut follower).await.body, b"mine");
    broker.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_carries_its_reply_queue_and_the_answer_reaches_only_that_queue() {
    let vhost = rabbit::vhost();
    let broker = connect(&vhost).await;
    let mut replies = broker.reply_queue().await.unwrap();
    let others = broker.reply_queue().await.unwrap();
    assert!(
        broker::is_reply_queue(replies.queue()),
        "RabbitMQ named the private queue {:?}",
        replies.queue()
    );
    assert_ne!(replies.queue(), others.queue());

    let headers = Headers::new();
    let request = Outgoing {
        reply_to: Some(replies.queue()),
        ..Outgoing::new(b"claim", "c1", &headers)
    };
    broker.publish(Route::JobEvents, request).await.unwrap();
    let mut events = broker
        .consume(broker::topology::JOB_EVENTS_QUEUE, 10)
        .await
        .unwrap();
    let delivery = next(&mut events).await;
    let reply_to = delivery
        .reply_to
        .clone()
        .expect("reply_to travels with the request");
    delivery.ack().await.unwrap();
    publish(&broker, Route::Reply { queue: &reply_to }, b"granted", "r1")
        .await
        .unwrap();
    assert_eq!(next(&mut replies).await.body, b"granted");
    // Routing happened before the answer arrived, so the other queue is settled by now.
    assert_eq!(
        counts(&vhost, others.queue()),
        (0, 0),
        "another requester's queue got the answer"
    );

    // The requester is gone: answering it is not an error, and the queue went with it.
    let name = replies.queue().to_owned();
    drop(replies);
    poll_until(WAIT, "the private queue to disappear", || {
        let listing = list_queues(&vhost, &[]);
        (!listing.lines().any(|line| line.trim() == name)).then_some(())
    });
    publish(&broker, Route::Reply { queue: &name }, b"late", "r2")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_sent_unconfirmed_arrive_in_order_and_a_reply_queue_needs_no_acks() {
    let vhost = rabbit::vhost();
    let broker = connect(&vhost).await;
    let mut replies = broker.reply_queue().await.unwrap();
    let queue = replies.queue().to_owned();
    let headers = Headers::new();
    let ids: Vec<String> = (0..200).map(|i| format!("answer-{i}")).collect();
    let answers: Vec<_> = ids
        .iter()
        .map(|id| {
            let route = Route::Reply { queue: &queue };
            (route, Outgoing::new(id.as_bytes(), id, &headers))
        })
        .collect();
    broker.send_unconfirmed(&answers).await.unwrap();
    let mut received = Vec::new();
    let mut held = Vec::new();
    for _ in &ids {
        let delivery = next(&mut replies).await;
        received.push(delivery.message_id.clone().unwrap_or_default());
        // Not settled: the broker forgot each answer as it sent it.
        held.push(delivery);
    }
    assert_eq!(received, ids, "answers out of order");
    assert_eq!(
        counts(&vhost, &queue),
        (0, 0),
        "a reply queue holds nothing unacked while its answers sit unsettled here"
    );
    // Settling them anyway is harmless: no unknown delivery tag closes the channel.
    for delivery in held {
        delivery.ack().await.unwrap();
    }
    broker
        .send_unconfirmed(&answers[..1])
        .await
        .expect("the channel is still open");
    assert_eq!(next(&mut replies).await.body, b"answer-0");
    broker.close().await;
}

/// Acks return once queued, before lapin's I/O thread writes them, and a broker closed right
/// after them must still write them first, or every worker that acks its last job and shuts
/// down would leave it to be redelivered. (lapin sends a connection's close ahead of queued
/// publishes, but not of queued acks; unconfirmed sends are waited for until written, so
/// that a stop order sent just before a shutdown is not lost either.)
#[tokio::test(flavor = "multi_thread")]
async fn acks_and_unconfirmed_sends_reach_the_broker_before_it_closes() {
    let vhost = rabbit::vhost();
    let listener = connect(&vhost).await;
    let mut replies = listener.reply_queue().await.unwrap();
    let queue = replies.queue().to_owned();
    let route = Route::Jobs {
        account: "dev",
        role: ExecutorRole::Apply,
    };
    for i in 0..3 {
        publish(&listener, route, b"job", &format!("job-{i}"))
            .await
            .unwrap();
    }

    let worker = connect(&vhost).await;
    let mut jobs = worker
        .consume(&jobs_queue("dev", ExecutorRole::Apply), 3)
        .await
        .unwrap();
    let mut taken = Vec::new();
    for _ in 0..3 {
        taken.push(next(&mut jobs).await);
    }
    // The broker's counts lag a little: first see all three out and unacked.
    poll_until(WAIT, "three unacked jobs", || {
        (counts(&vhost, "jobs.dev.apply") == (0, 3)).then_some(())
    });
    let headers = Headers::new();
    let farewell = [(
        Route::Reply { queue: &queue },
        Outgoing::new(b"farewell", "farewell", &headers),
    )];
    worker.send_unconfirmed(&farewell).await.unwrap();
    // The acks last, and the close at once: the consuming connection closes first, so its
    // close is queued right behind them.
    for delivery in taken {
        delivery.ack().await.unwrap();
    }
    worker.close().await;

    assert_eq!(next(&mut replies).await.body, b"farewell");
    // Were an ack lost in the close, its job would be ready again, never gone.
    poll_until(WAIT, "the acks to empty jobs.dev.apply", || {
        (counts(&vhost, "jobs.dev.apply") == (0, 0)).then_some(())
    });
    listener.close().await;
}

/// Held acks (the dispatcher holds its batches' acks to send them together) send nothing until
/// released, and a release settles exactly what was held: with one ack through the highest
/// held delivery, never a later one that is still being handled.
#[tokio::test(flavor = "multi_thread")]
async fn held_acks_are_sent_only_on_release_and_settle_only_what_was_held() {
    let vhost = rabbit::vhost();
    let broker = connect(&vhost).await;
    let route = Route::Jobs {
        account: "dev",
        role: ExecutorRole::Apply,
    };
    for i in 0..4 {
        publish(&broker, route, b"job", &format!("job-{i}"))
            .await
            .unwrap();
    }
    let mut jobs = broker
        .consume(&jobs_queue("dev", ExecutorRole::Apply), 4)
        .await
        .unwrap();
    let mut taken = Vec::new();
    for _ in 0..4 {
        taken.push(next(&mut jobs).await);
    }
    let last = taken.pop().unwrap();
    let still_handled = taken.pop().unwrap();
    let mut held = HeldAcks::default();
    for delivery in taken {
        held.hold(vec![delivery]).unwrap();
    }
    assert_eq!(held.len(), 2);
    // Acked after the holds on the same channel: were a hold to send its ack, it would reach
    // the queue first, and three unacked would never be seen.
    last.ack().await.unwrap();
    poll_until(WAIT, "the last job acked, the held two not", || {
        (counts(&vhost, "jobs.dev.apply") == (0, 3)).then_some(())
    });

    held.release().unwrap();
    assert!(held.is_empty());
    poll_until(
        WAIT,
        "the held two acked, the one still handled not",
        || (counts(&vhost, "jobs.dev.apply") == (0, 1)).then_some(()),
    );
    still_handled.ack().await.unwrap();
    poll_until(WAIT, "every job acked", || {
        (counts(&vhost, "jobs.dev.apply") == (0, 0)).then_some(())
    });
    broker.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_published_at_once_is_confirmed_whole_and_arrives_in_order() {
    let vhost = rabbit::vhost();
    let broker = connect(&vhost).await;
    let headers = Headers::new();
    let ids: Vec<String> = (0..1000).map(|i| format!("event-{i}")).collect();
    let messages: Vec<_> = ids
        .iter()
        .map(|id| (Route::JobEvents, Outgoing::new(id.as_bytes(), id, &headers)))
        .collect();
    broker.publish_all(&messages).await.unwrap();
    // Asked of the queue itself: `list_queues` shows a quorum queue's counts with a delay.
    assert_eq!(
        broker
            .queue_depth(broker::topology::JOB_EVENTS_QUEUE)
            .await
            .unwrap(),
        1000,
        "confirmed means queued"
    );
    let mut events = broker
        .consume(broker::topology::JOB_EVENTS_QUEUE, 1000)
        .await
        .unwrap();
    let mut received = Vec::new();
    let mut deliveries = Vec::new();
    for _ in &ids {
        let delivery = next(&mut events).await;
        received.push(delivery.message_id.clone().unwrap_or_default());
        deliveries.push(delivery);
    }
    assert_eq!(received, ids, "messages out of order");
    broker::ack_all(deliveries).await.unwrap();
    broker.close().await;
}

/// A TCP proxy to RabbitMQ that can be frozen: it then keeps every connection open and
/// forwards nothing, like a broker that accepted the connection and stopped answering.
struct FreezingProxy {
    port: u16,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl FreezingProxy {
    async fn start() -> FreezingProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let frozen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = frozen.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(upstream) = tokio::net::TcpStream::connect("127.0.0.1:5672").await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (upstream_read, upstream_write) = upstream.into_split();
                tokio::spawn(pump(client_read, upstream_write, flag.clone()));
                tokio::spawn(pump(upstream_read, client_write, flag.clone()));
            }
        });
        FreezingProxy { port, frozen }
    }

    fn url(&self, vhost: &Vhost) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/{}", self.port, vhost.name)
    }

    fn freeze(&self) {
        self.frozen.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Copies bytes until the connection ends; once frozen, holds them instead.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0_u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if frozen.load(std::sync::atomic::Ordering::SeqCst) {
            // Keep both ends open, answer nothing.
            std::future::pending::<()>().await;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

/// How long a test waits for an operation that must end by its own deadline.
const OUTER: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_that_never_confirms_fails_the_publish_at_the_confirm_deadline() {
    let vhost = rabbit::vhost();
    let proxy = FreezingProxy::start().await;
    let timeouts = BrokerTimeouts {
        connect: Duration::from_secs(5),
        confirm: Duration::from_secs(2),
    };
    let broker = Broker::connect_with(&proxy.url(&vhost), "freezing", timeouts)
        .await
        .expect("connect through the proxy");
    broker
        .declare_topology(&Topology::new(["dev".to_owned()]))
        .await
        .expect("declare");
    // Answered while the proxy forwards.
    publish(&broker, Route::Changes, b"before", "m1")
        .await
        .expect("confirmed");
    proxy.freeze();
    let frozen = tokio::time::timeout(OUTER, publish(&broker, Route::Changes, b"after", "m2"))
        .await
        .expect("the publish ends by its own deadline");
    match frozen {
        Err(err @ BrokerError::Timeout { .. }) => {
            assert!(err.is_transient());
            assert_eq!(
                err.to_string(),
                "the broker did not answer a publisher confirm (timeouts.broker_confirm) within 2 s"
            );
        }
        other => panic!("expected a confirm timeout, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_listener_that_never_speaks_amqp_fails_the_connect_at_its_deadline() {
    let vhost = rabbit::vhost();
    // Accepts connections (the kernel does) and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "amqp://guest:guest@127.0.0.1:{}/{}",
        silent.local_addr().unwrap().port(),
        vhost.name
    );
    let timeouts = BrokerTimeouts {
        connect: Duration::from_secs(2),
        confirm: Duration::from_secs(2),
    };
    let connected = tokio::time::timeout(OUTER, Broker::connect_with(&url, "silent", timeouts))
        .await
        .expect("the connect ends by its own deadline");
    match connected {
        Err(err @ BrokerError::Connect { .. }) => {
            let text = err.to_string();
            assert!(
                text.contains("no AMQP handshake within 2 s (timeouts.broker_connect)")
                    && text.contains("guest:***@"),
                "{text}"
            );
        }
        other => panic!("expected a connect timeout, got {other:?}"),
    }
    drop(silent);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_claims_is_refused_once_the_claims_queue_is_full_and_nothing_queued_is_lost() {
    use broker::topology::{CLAIMS_MAX_LENGTH, CLAIMS_QUEUE};
    let vhost = rabbit::vhost();
    let broker = connect(&vhost).await;
    let headers = Headers::new();
    let body = b"claim";
    let limit = usize::try_from(CLAIMS_MAX_LENGTH).unwrap();
    for chunk in 0..limit / 1000 {
        let ids: Vec<String> = (0..1000).map(|i| format!("{chunk}-{i}")).collect();
        let messages: Vec<_> = ids
            .iter()
            .map(|id| (Route::Claims, Outgoing::new(body, id, &headers)))
            .collect();
        broker
            .publish_all(&messages)
            .await
            .expect("below the bound");
    }
    let refused = publish(&broker, Route::Claims, body, "one-too-many").await;
    assert!(
        matches!(refused, Err(BrokerError::NotConfirmed { .. })),
        "{refused:?}"
    );
    // A worker's claims go unconfirmed: one the full queue drops is no error (the worker asks
    // again when no answer comes), and it costs the connection nothing.
    let dropped = [(Route::Claims, Outgoing::new(body, "dropped", &headers))];
    broker.send_unconfirmed(&dropped).await.unwrap();
    assert_eq!(counts(&vhost, CLAIMS_QUEUE), (CLAIMS_MAX_LENGTH as u64, 0));
    // The first claim is still the first: the bound refuses new ones, it drops none.
    let mut claims = broker.consume(CLAIMS_QUEUE, 1).await.unwrap();
    let first = next(&mut claims).await;
    assert_eq!(first.message_id.as_deref(), Some("0-0"));
    first.ack().await.unwrap();
    broker.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn connecting_to_a_cluster_skips_a_node_that_does_not_answer_and_says_which_it_reached() {
    let vhost = rabbit::vhost();
    // A port nothing listens on, then the real node: the second is reached.
    let nodes = vec![
        vhost.url.replace("127.0.0.1:5672", "127.0.0.1:1"),
        vhost.url.clone(),
    ];
    let timeouts = BrokerTimeouts::default();
    let (broker, reached) = Broker::connect_any(&nodes, 0, "cluster-test", timeouts)
        .await
        .expect("the live node answers");
    assert_eq!(reached, 1);
    broker
        .declare_topology(&Topology::new(["dev".to_owned()]))
        .await
        .expect("the reached node works");
    // Starting at the live node, it is the one reached, first.
    let (_, reached) = Broker::connect_any(&nodes, 1, "cluster-test", timeouts)
        .await
        .unwrap();
    assert_eq!(reached, 1);
    // No node answers: the last node's error.
    let dead = vec![nodes[0].clone(), nodes[0].replace(":1/", ":2/")];
    match Broker::connect_any(&dead, 0, "cluster-test", timeouts).await {
        Err(BrokerError::Connect { url, .. }) => assert!(url.contains(":2/"), "{url}"),
        other => panic!("expected a connect error, got {:?}", other.map(|(_, i)| i)),
    }
}
