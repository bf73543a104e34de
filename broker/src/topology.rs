//! Names and shapes of every exchange and queue: one place, shared by both adapters and by the
//! RabbitMQ definitions in `deploy/rabbitmq/`.
//!
//! ```text
//! pipelines.changes    (direct) --change-->    pipelines.changes      (quorum) → dispatcher
//! pipelines.jobs       (direct) --<account>.<role>--> jobs.<account>.<role> (quorum) → executors
//!                       (one queue per account and role: `plan` workers run pull requests'
//!                        plans, `apply` workers everything of a push to the deploy branch)
//! pipelines.job-events (direct) --event-->     pipelines.job-events   (quorum) → dispatcher
//!                      (direct) --claim-->     pipelines.claims       (classic, transient) → dispatcher
//!                       (claims and heartbeats: requests a worker repeats on silence, so they
//!                        need no Raft log entry; outcomes and releases stay on the quorum queue)
//!                      (direct) --log-->       pipelines.logs         (quorum, bounded) → dispatcher
//!                       (jobs' logs as they are written, for the web page; bounded in bytes,
//!                        so a chatty job waits for the dispatcher instead of flooding it)
//! pipelines.status     (topic)  --run.<id>-->  one private queue per follower
//! pipelines.control    (direct) --control-->   pipelines.control      (quorum) → dispatcher
//! pipelines.dead-letter(direct) --<queue>-->   dead.<queue>           (quorum) → operators
//! (default exchange)           --<queue>-->   amq.gen-…  one private reply queue per executor
//! ```

use proto_types::ExecutorRole;
use uuid::Uuid;

use crate::Route;

pub const CHANGES_EXCHANGE: &str = "pipelines.changes";
pub const CHANGES_QUEUE: &str = "pipelines.changes";
const CHANGES_KEY: &str = "change";

pub const JOBS_EXCHANGE: &str = "pipelines.jobs";

pub const JOB_EVENTS_EXCHANGE: &str = "pipelines.job-events";
pub const JOB_EVENTS_QUEUE: &str = "pipelines.job-events";
const JOB_EVENTS_KEY: &str = "event";

/// A worker's claims (`Started`) and heartbeats. Transient: a lost one is asked again.
pub const CLAIMS_QUEUE: &str = "pipelines.claims";
const CLAIMS_KEY: &str = "claim";
/// Claims the queue holds at most; past it the broker refuses the publish (the worker asks
/// again), so a flood from a compromised plan worker cannot grow the broker's memory.
pub const CLAIMS_MAX_LENGTH: i64 = 10_000;
/// And bytes at most (a claim is a few hundred; one message may be up to 16 MiB).
pub const CLAIMS_MAX_BYTES: i64 = 64 * 1024 * 1024;
/// A claim nobody took within this long is stale: its worker has asked again since
/// (it waits 10 s for an answer). Expired claims are dropped, not dead-lettered.
pub const CLAIMS_TTL_MS: i64 = 60_000;

/// Jobs' log chunks, on their way to the dispatcher's log store.
pub const LOGS_QUEUE: &str = "pipelines.logs";
const LOGS_KEY: &str = "log";
/// Log bytes the queue holds at most. Past it the broker refuses the publish and the worker
/// waits and sends again (its job goes on writing to its own disk meanwhile): back-pressure
/// that keeps a job printing gigabytes from filling the broker or the dispatcher.
pub const LOGS_MAX_BYTES: i64 = 256 * 1024 * 1024;

pub const STATUS_EXCHANGE: &str = "pipelines.status";

pub const CONTROL_EXCHANGE: &str = "pipelines.control";
pub const CONTROL_QUEUE: &str = "pipelines.control";
const CONTROL_KEY: &str = "control";

pub const DEAD_LETTER_EXCHANGE: &str = "pipelines.dead-letter";

pub use proto_types::REPLY_QUEUE_PREFIX;

/// Deliveries of one message after which the broker dead-letters it by itself: the guard
/// against a message that crashes every consumer that touches it.
pub const DELIVERY_LIMIT: u32 = 10;

/// The queue the executors of `account` in `role` consume: `jobs.prod.plan`.
pub fn jobs_queue(account: &str, role: ExecutorRole) -> String {
    format!("jobs.{}", jobs_routing_key(account, role))
}

/// The routing key of an account's and role's jobs on the jobs exchange: `prod.apply`.
pub fn jobs_routing_key(account: &str, role: ExecutorRole) -> String {
    format!("{account}.{role}")
}

/// Where messages of `queue` go when they can never be handled.
pub fn dead_letter_queue(queue: &str) -> String {
    format!("dead.{queue}")
}

pub fn status_routing_key(run_id: Uuid) -> String {
    format!("run.{run_id}")
}

/// A queue argument's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Argument {
    Text(&'static str),
    Owned(String),
    Number(i64),
}

/// How a work queue keeps its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueKind {
    /// Quorum, persistent messages, at-least-once dead-lettering and a delivery limit: for
    /// facts that must not be lost (changes, jobs, outcomes, control orders).
    Durable,
    /// Classic and not durable, transient messages, bounded length and age: for requests the
    /// sender repeats when no answer comes (claims, heartbeats). No Raft log entry, no disk
    /// write. It lives on the node that declared it: when that node goes (a cluster losing a
    /// node, a broker restart), the queue goes with it, and the dispatcher declares it again
    /// wherever it reconnects; what was in it is asked again.
    Transient,
    /// Like [`QueueKind::Durable`], bounded in bytes ([`LOGS_MAX_BYTES`]): a full queue refuses
    /// publishes, which makes their sender wait (log chunks).
    Bounded,
}

impl QueueKind {
    /// Whether the queue outlives its node's restart (every kind but [`QueueKind::Transient`]).
    pub fn durable(self) -> bool {
        !matches!(self, QueueKind::Transient)
    }
}

/// The arguments a work queue is declared with, by its kind.
pub fn work_queue_arguments(spec: &QueueSpec) -> Vec<(&'static str, Argument)> {
    match spec.kind {
        QueueKind::Bounded => {
            let mut arguments = work_queue_arguments(&QueueSpec {
                kind: QueueKind::Durable,
                ..spec.clone()
            });
            arguments.push(("x-max-length-bytes", Argument::Number(LOGS_MAX_BYTES)));
            arguments
        }
        QueueKind::Durable => vec![
            ("x-queue-type", Argument::Text("quorum")),
            (
                "x-dead-letter-exchange",
                Argument::Text(DEAD_LETTER_EXCHANGE),
            ),
            (
                "x-dead-letter-routing-key",
                Argument::Owned(spec.name.clone()),
            ),
            // At-least-once dead-lettering: the broker keeps a message until the dead-letter
            // queue confirms it. It requires reject-publish overflow.
            ("x-dead-letter-strategy", Argument::Text("at-least-once")),
            ("x-overflow", Argument::Text("reject-publish")),
            (
                "x-delivery-limit",
                Argument::Number(i64::from(DELIVERY_LIMIT)),
            ),
        ],
        // No dead-letter exchange: what the broker would dead-letter here (an expired or
        // rejected claim) has been asked again by its worker. The dispatcher still copies an
        // undecodable claim to `dead.pipelines.claims` itself, with the reason.
        QueueKind::Transient => vec![
            ("x-queue-type", Argument::Text("classic")),
            ("x-max-length", Argument::Number(CLAIMS_MAX_LENGTH)),
            ("x-max-length-bytes", Argument::Number(CLAIMS_MAX_BYTES)),
            ("x-overflow", Argument::Text("reject-publish")),
            ("x-message-ttl", Argument::Number(CLAIMS_TTL_MS)),
        ],
    }
}

/// The arguments of a dead-letter queue: quorum, nothing more.
pub fn dead_letter_queue_arguments() -> Vec<(&'static str, Argument)> {
    vec![("x-queue-type", Argument::Text("quorum"))]
}

/// The exchange kinds the topology uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeKind {
    Direct,
    Topic,
}

/// Everything that must exist for a set of accounts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    pub accounts: Vec<String>,
}

/// A work queue bound to one exchange with one key, with its dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    pub name: String,
    pub exchange: &'static str,
    pub routing_key: String,
    pub dead_letter_queue: String,
    pub kind: QueueKind,
}

impl Topology {
    pub fn new(accounts: impl IntoIterator<Item = String>) -> Topology {
        Topology {
            accounts: accounts.into_iter().collect(),
        }
    }

    pub fn exchanges(&self) -> [(&'static str, ExchangeKind); 6] {
        [
            (CHANGES_EXCHANGE, ExchangeKind::Direct),
            (JOBS_EXCHANGE, ExchangeKind::Direct),
            (JOB_EVENTS_EXCHANGE, ExchangeKind::Direct),
            (STATUS_EXCHANGE, ExchangeKind::Topic),
            (CONTROL_EXCHANGE, ExchangeKind::Direct),
            (DEAD_LETTER_EXCHANGE, ExchangeKind::Direct),
        ]
    }

    pub fn work_queues(&self) -> Vec<QueueSpec> {
        let spec = |name: String, exchange, routing_key: String| QueueSpec {
            dead_letter_queue: dead_letter_queue(&name),
            name,
            exchange,
            routing_key,
            kind: QueueKind::Durable,
        };
        let mut queues = vec![
            spec(CHANGES_QUEUE.into(), CHANGES_EXCHANGE, CHANGES_KEY.into()),
            spec(
                JOB_EVENTS_QUEUE.into(),
                JOB_EVENTS_EXCHANGE,
                JOB_EVENTS_KEY.into(),
            ),
            QueueSpec {
                kind: QueueKind::Transient,
                ..spec(CLAIMS_QUEUE.into(), JOB_EVENTS_EXCHANGE, CLAIMS_KEY.into())
            },
            spec(CONTROL_QUEUE.into(), CONTROL_EXCHANGE, CONTROL_KEY.into()),
            QueueSpec {
                kind: QueueKind::Bounded,
                ..spec(LOGS_QUEUE.into(), JOB_EVENTS_EXCHANGE, LOGS_KEY.into())
            },
        ];
        for account in &self.accounts {
            for role in ExecutorRole::ALL {
                queues.push(spec(
                    jobs_queue(account, role),
                    JOBS_EXCHANGE,
                    jobs_routing_key(account, role),
                ));
            }
        }
        queues
    }
}

/// Where a route's messages go and how they are sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Resolved {
    pub(crate) exchange: &'static str,
    pub(crate) routing_key: String,
    /// Whether an unroutable publish is an error.
    pub(crate) mandatory: bool,
    /// Whether the broker writes the message to disk (delivery mode 2).
    pub(crate) persistent: bool,
}

impl Resolved {
    /// A copy of a message of `queue` on its way to `dead.<queue>`.
    pub(crate) fn dead_letter(queue: &str) -> Resolved {
        Resolved {
            exchange: DEAD_LETTER_EXCHANGE,
            routing_key: queue.to_owned(),
            mandatory: true,
            persistent: true,
        }
    }
}

/// The exchange and routing key of a route, whether an unroutable publish is an error, and
/// whether the message is persistent.
pub(crate) fn resolve(route: Route<'_>) -> Resolved {
    let (exchange, routing_key, mandatory, persistent) = match route {
        Route::Changes => (CHANGES_EXCHANGE, CHANGES_KEY.into(), true, true),
        Route::Jobs { account, role } => {
            (JOBS_EXCHANGE, jobs_routing_key(account, role), true, true)
        }
        Route::JobEvents => (JOB_EVENTS_EXCHANGE, JOB_EVENTS_KEY.into(), true, true),
        // Not mandatory: while the claims queue is being declared again (its node went), a
        // claim goes nowhere and its worker asks again, as it does when no answer comes.
        Route::Claims => (JOB_EVENTS_EXCHANGE, CLAIMS_KEY.into(), false, false),
        Route::Logs => (JOB_EVENTS_EXCHANGE, LOGS_KEY.into(), true, true),
        Route::Status { run_id } => (STATUS_EXCHANGE, status_routing_key(run_id), false, true),
        Route::Control => (CONTROL_EXCHANGE, CONTROL_KEY.into(), true, true),
        // The default exchange routes by queue name. Reply queues are transient anyway.
        Route::Reply { queue } => ("", queue.into(), false, false),
    };
    Resolved {
        exchange,
        routing_key,
        mandatory,
        persistent,
    }
}

/// AMQP topic matching: words split on `.`, `*` matches one word, `#` zero or more.
pub(crate) fn topic_matches(pattern: &str, key: &str) -> bool {
    fn go(pattern: &[&str], key: &[&str]) -> bool {
        match (pattern.split_first(), key.split_first()) {
            (None, None) => true,
            (Some((&"#", rest)), _) => {
                go(rest, key) || key.split_first().is_some_and(|(_, tail)| go(pattern, tail))
            }
            (Some((&"*", rest)), Some((_, tail))) => go(rest, tail),
            (Some((word, rest)), Some((head, tail))) => word == head && go(rest, tail),
            _ => false,
        }
    }
    let pattern: Vec<&str> = pattern.split('.').collect();
    let key: Vec<&str> = key.split('.').collect();
    go(&pattern, &key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_work_queue_has_a_dead_letter_queue_and_one_queue_per_account_and_role() {
        let topology = Topology::new(["dev".to_owned(), "prod".to_owned()]);
        let names: Vec<_> = topology.work_queues().into_iter().map(|q| q.name).collect();
        assert_eq!(
            names,
            [
                "pipelines.changes",
                "pipelines.job-events",
                "pipelines.claims",
                "pipelines.control",
                "pipelines.logs",
                "jobs.dev.plan",
                "jobs.dev.apply",
                "jobs.prod.plan",
                "jobs.prod.apply"
            ]
        );
        for queue in topology.work_queues() {
            assert_eq!(queue.dead_letter_queue, format!("dead.{}", queue.name));
            let expected = match queue.name.as_str() {
                CLAIMS_QUEUE => QueueKind::Transient,
                LOGS_QUEUE => QueueKind::Bounded,
                _ => QueueKind::Durable,
            };
            assert_eq!(queue.kind, expected, "{}", queue.name);
        }
    }

    #[test]
    fn logs_are_durable_and_bounded_in_bytes_so_a_full_queue_pushes_back() {
        let logs = resolve(Route::Logs);
        assert!(logs.persistent && logs.mandatory);
        let spec = Topology::default()
            .work_queues()
            .into_iter()
            .find(|q| q.name == LOGS_QUEUE)
            .unwrap();
        let arguments = work_queue_arguments(&spec);
        assert!(arguments.contains(&("x-queue-type", Argument::Text("quorum"))));
        assert!(arguments.contains(&("x-overflow", Argument::Text("reject-publish"))));
        assert!(arguments.contains(&("x-max-length-bytes", Argument::Number(LOGS_MAX_BYTES))));
    }

    #[test]
    fn claims_share_the_job_events_exchange_but_are_transient_and_bounded() {
        let events = resolve(Route::JobEvents);
        let claims = resolve(Route::Claims);
        assert_eq!(events.exchange, claims.exchange);
        assert_ne!(events.routing_key, claims.routing_key);
        assert!(events.persistent && !claims.persistent);
        assert!(
            !claims.mandatory,
            "a claim sent while its queue is declared again is asked again, not an error"
        );
        assert!(
            events.mandatory,
            "an outcome nobody can receive is an error"
        );
        let spec = Topology::default()
            .work_queues()
            .into_iter()
            .find(|q| q.name == CLAIMS_QUEUE)
            .unwrap();
        let arguments = work_queue_arguments(&spec);
        assert!(arguments.contains(&("x-queue-type", Argument::Text("classic"))));
        assert!(arguments.contains(&("x-overflow", Argument::Text("reject-publish"))));
        assert!(arguments.contains(&("x-max-length", Argument::Number(CLAIMS_MAX_LENGTH))));
        assert!(
            !arguments.iter().any(|(key, _)| *key == "x-delivery-limit"),
            "classic queues refuse quorum-only arguments"
        );
    }

    #[test]
    fn topic_patterns_follow_amqp_rules() {
        assert!(topic_matches("run.abc", "run.abc"));
        assert!(!topic_matches("run.abc", "run.abd"));
        assert!(topic_matches("run.*", "run.abc"));
        assert!(!topic_matches("run.*", "run.abc.x"));
        assert!(topic_matches("run.#", "run.abc.x"));
        assert!(topic_matches("#", "anything.at.all"));
        assert!(topic_matches("run.#", "run"));
    }
}
