//! Names and shapes of every exchange and queue: one place, shared by both adapters and by the
//! RabbitMQ definitions in `deploy/rabbitmq/`.
//!
//! ```text
//! pipelines.changes    (direct) --change-->    pipelines.changes      (quorum) → dispatcher
//! pipelines.jobs       (direct) --<account>.<role>--> jobs.<account>.<role> (quorum) → executors
//!                       (one queue per account and role: `plan` workers run pull requests'
//!                        plans, `apply` workers everything of a push to the deploy branch)
//! pipelines.job-events (direct) --event-->     pipelines.job-events   (quorum) → dispatcher
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

/// The arguments every work queue is declared with: quorum, dead-lettering at least once to
/// its own dead-letter queue, and a delivery limit.
pub fn work_queue_arguments(queue: &str) -> Vec<(&'static str, Argument)> {
    vec![
        ("x-queue-type", Argument::Text("quorum")),
        (
            "x-dead-letter-exchange",
            Argument::Text(DEAD_LETTER_EXCHANGE),
        ),
        (
            "x-dead-letter-routing-key",
            Argument::Owned(queue.to_owned()),
        ),
        // At-least-once dead-lettering: the broker keeps a message until the dead-letter queue
        // confirms it. It requires reject-publish overflow.
        ("x-dead-letter-strategy", Argument::Text("at-least-once")),
        ("x-overflow", Argument::Text("reject-publish")),
        (
            "x-delivery-limit",
            Argument::Number(i64::from(DELIVERY_LIMIT)),
        ),
    ]
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

/// A durable work queue bound to one exchange with one key, with its dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    pub name: String,
    pub exchange: &'static str,
    pub routing_key: String,
    pub dead_letter_queue: String,
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
        };
        let mut queues = vec![
            spec(CHANGES_QUEUE.into(), CHANGES_EXCHANGE, CHANGES_KEY.into()),
            spec(
                JOB_EVENTS_QUEUE.into(),
                JOB_EVENTS_EXCHANGE,
                JOB_EVENTS_KEY.into(),
            ),
            spec(CONTROL_QUEUE.into(), CONTROL_EXCHANGE, CONTROL_KEY.into()),
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

/// The exchange and routing key of a route, and whether an unroutable publish is an error.
pub(crate) fn resolve(route: Route<'_>) -> (&'static str, String, bool) {
    match route {
        Route::Changes => (CHANGES_EXCHANGE, CHANGES_KEY.into(), true),
        Route::Jobs { account, role } => (JOBS_EXCHANGE, jobs_routing_key(account, role), true),
        Route::JobEvents => (JOB_EVENTS_EXCHANGE, JOB_EVENTS_KEY.into(), true),
        Route::Status { run_id } => (STATUS_EXCHANGE, status_routing_key(run_id), false),
        Route::Control => (CONTROL_EXCHANGE, CONTROL_KEY.into(), true),
        // The default exchange routes by queue name.
        Route::Reply { queue } => ("", queue.into(), false),
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
                "pipelines.control",
                "jobs.dev.plan",
                "jobs.dev.apply",
                "jobs.prod.plan",
                "jobs.prod.apply"
            ]
        );
        for queue in topology.work_queues() {
            assert_eq!(queue.dead_letter_queue, format!("dead.{}", queue.name));
        }
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
