//! RabbitMQ definitions for a least-privilege deployment: the JSON `rabbitmqctl
//! import_definitions` loads. It holds the vhost, every exchange, queue and binding of the
//! topology (with the same arguments the adapter declares), policies, and one user per
//! component with the narrowest permissions that let it work:
//!
//! | user          | configure      | write                                        | read                                   |
//! |---------------|----------------|----------------------------------------------|----------------------------------------|
//! | admin         | everything     | everything                                   | everything                             |
//! | dispatcher    | nothing        | jobs, status, dead-letter, default (replies) | changes, job events, claims, control   |
//! | orchestrator, orchestrator-deploy | its own queues | changes exchange, its own queues | status exchange (one run id at a time) |
//! | executor of A, role R | its own queues | job events (and claims), dead-letter | `jobs.A.R`, its own queues             |
//! | each approver | nothing        | control exchange                             | nothing                                |
//!
//! The two orchestrator users have the same permissions; the dispatcher tells them apart
//! (`[dispatcher] deploy_orchestrator_users`): pull requests' CI holds `orchestrator`, and only
//! the deploy branch's workflow holds `orchestrator-deploy`, whose pushes may apply.
//!
//! Each account has two executor users, `executor-A-plan` and `executor-A-apply`: a plan
//! worker runs a pull request's code, so its login must not open the apply queue.
//!
//! "Its own queues" are the server-named, exclusive `amq.gen-*` queues (run followers, reply
//! queues): exclusive, so no other connection can read them. A topic permission on the status
//! exchange lets the orchestrator bind only to one full run id at a time, never to a pattern.

use std::collections::BTreeMap;

use base64::Engine;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use proto_types::ExecutorRole;

use crate::topology::{
    self, Argument, CHANGES_EXCHANGE, CHANGES_QUEUE, CLAIMS_QUEUE, CONTROL_EXCHANGE, CONTROL_QUEUE,
    DEAD_LETTER_EXCHANGE, ExchangeKind, JOB_EVENTS_EXCHANGE, JOB_EVENTS_QUEUE, JOBS_EXCHANGE,
    LOGS_QUEUE, STATUS_EXCHANGE, Topology,
};

/// A component's broker identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Runs `pipelines broker setup` and `pipelines cancel`.
    Admin,
    Dispatcher,
    /// The orchestrator of pull requests' CI.
    Orchestrator,
    /// The orchestrator of the deploy branch's workflow: its push and drift events, alone,
    /// start applies and drift checks when the dispatcher lists it.
    DeployOrchestrator,
    Executor {
        account: String,
        role: ExecutorRole,
    },
    /// A person in `[approvals] users`: sends `pipelines approve`, `reject` (and `cancel`).
    /// Named exactly as the config names them, since the dispatcher checks that name.
    Approver(String),
}

impl Role {
    /// Every role a topology needs.
    pub fn all(topology: &Topology) -> Vec<Role> {
        let mut roles = vec![
            Role::Admin,
            Role::Dispatcher,
            Role::Orchestrator,
            Role::DeployOrchestrator,
        ];
        for account in &topology.accounts {
            roles.extend(ExecutorRole::ALL.map(|role| Role::Executor {
                account: account.clone(),
                role,
            }));
        }
        roles
    }

    /// The user name, after `prefix`: `pipelines-dispatcher`, `pipelines-executor-prod-plan`.
    pub fn user(&self, prefix: &str) -> String {
        match self {
            Role::Admin => format!("{prefix}admin"),
            Role::Dispatcher => format!("{prefix}dispatcher"),
            Role::Orchestrator => format!("{prefix}orchestrator"),
            Role::DeployOrchestrator => format!("{prefix}orchestrator-deploy"),
            Role::Executor { account, role } => format!("{prefix}executor-{account}-{role}"),
            Role::Approver(user) => user.clone(),
        }
    }

    /// The environment variable holding the role's password for `pipelines broker
    /// definitions`: `PIPELINES_RABBITMQ_PASSWORD_DISPATCHER`, `..._EXECUTOR_PROD_APPLY`.
    pub fn password_variable(&self) -> String {
        let role = match self {
            Role::Admin => "ADMIN".to_owned(),
            Role::Dispatcher => "DISPATCHER".to_owned(),
            Role::Orchestrator => "ORCHESTRATOR".to_owned(),
            Role::DeployOrchestrator => "ORCHESTRATOR_DEPLOY".to_owned(),
            Role::Executor { account, role } => format!(
                "EXECUTOR_{}_{}",
                account.to_ascii_uppercase().replace('-', "_"),
                role.as_str().to_ascii_uppercase()
            ),
            Role::Approver(user) => format!(
                "APPROVER_{}",
                user.chars()
                    .map(|c| if c.is_ascii_alphanumeric() {
                        c.to_ascii_uppercase()
                    } else {
                        '_'
                    })
                    .collect::<String>()
            ),
        };
        format!("PIPELINES_RABBITMQ_PASSWORD_{role}")
    }

    /// `(configure, write, read)` regular expressions.
    pub fn permissions(&self) -> (String, String, String) {
        let names = |names: &[&str]| {
            format!(
                "^({})$",
                names
                    .iter()
                    .map(|n| escape(n))
                    .collect::<Vec<_>>()
                    .join("|")
            )
        };
        let own = format!("{}.*", escape(topology::REPLY_QUEUE_PREFIX));
        match self {
            Role::Admin => (".*".into(), ".*".into(), ".*".into()),
            Role::Dispatcher => (
                // The claims queue: it does not outlive its node, and the dispatcher declares
                // it again wherever it reconnects (binding it needs the queue's write, and read
                // on the job-events exchange, which shares its queue's name).
                format!("^{}$", escape(CLAIMS_QUEUE)),
                // The changes exchange: the `[[drift]]` schedules submit drift runs. Not the
                // control exchange: the web page's actions reach the dispatcher in process, so
                // its login cannot be used to approve as the page.
                names(&[
                    JOBS_EXCHANGE,
                    STATUS_EXCHANGE,
                    DEAD_LETTER_EXCHANGE,
                    CHANGES_EXCHANGE,
                    CLAIMS_QUEUE,
                    "amq.default",
                ]),
                names(&[
                    CHANGES_QUEUE,
                    JOB_EVENTS_QUEUE,
                    CLAIMS_QUEUE,
                    CONTROL_QUEUE,
                    LOGS_QUEUE,
                ]),
            ),
            Role::Orchestrator | Role::DeployOrchestrator => (
                format!("^{own}$"),
                format!("^({}|{own})$", escape(CHANGES_EXCHANGE)),
                format!("^({}|{own})$", escape(STATUS_EXCHANGE)),
            ),
            Role::Executor { account, role } => (
                format!("^{own}$"),
                names(&[JOB_EVENTS_EXCHANGE, DEAD_LETTER_EXCHANGE]),
                format!(
                    "^({}|{own})$",
                    escape(&topology::jobs_queue(account, *role))
                ),
            ),
            Role::Approver(_) => ("^$".into(), names(&[CONTROL_EXCHANGE]), "^$".into()),
        }
    }
}

/// What a run follower may bind to on the status exchange: one full run id.
pub const RUN_ROUTING_KEY_PATTERN: &str =
    r"^run\.[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$";

/// A user with the hash of its password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub role: Role,
    pub name: String,
    pub password_hash: String,
}

/// RabbitMQ's `rabbit_password_hashing_sha256`: base64(salt ++ sha256(salt ++ password)).
pub fn password_hash(password: &str, salt: [u8; 4]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(salt);
    hasher.update(password.as_bytes());
    let mut bytes = salt.to_vec();
    bytes.extend_from_slice(&hasher.finalize());
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The definitions document for `topology` in `vhost`.
pub fn definitions(
    topology: &Topology,
    vhost: &str,
    users: &[User],
    consumer_timeout_ms: Option<u64>,
) -> Value {
    let exchanges: Vec<Value> = topology
        .exchanges()
        .iter()
        .map(|(name, kind)| {
            let kind = match kind {
                ExchangeKind::Direct => "direct",
                ExchangeKind::Topic => "topic",
            };
            json!({ "name": name, "vhost": vhost, "type": kind, "durable": true, "auto_delete": false, "internal": false, "arguments": {} })
        })
        .collect();
    let mut queues = Vec::new();
    let mut bindings = Vec::new();
    let binding = |source: &str, queue: &str, key: &str| json!({ "source": source, "vhost": vhost, "destination": queue, "destination_type": "queue", "routing_key": key, "arguments": {} });
    for spec in topology.work_queues() {
        let queue = |name: &str, durable: bool, arguments: Vec<(&'static str, Argument)>| json!({ "name": name, "vhost": vhost, "durable": durable, "auto_delete": false, "arguments": arguments_json(arguments) });
        queues.push(queue(
            &spec.name,
            spec.kind.durable(),
            topology::work_queue_arguments(&spec),
        ));
        queues.push(queue(
            &spec.dead_letter_queue,
            true,
            topology::dead_letter_queue_arguments(),
        ));
        bindings.push(binding(spec.exchange, &spec.name, &spec.routing_key));
        bindings.push(binding(
            DEAD_LETTER_EXCHANGE,
            &spec.dead_letter_queue,
            &spec.name,
        ));
    }
    // The quorum work queues. Not the claims queue: it is classic, where a delivery limit
    // means nothing, and what the broker would dead-letter there has been asked again.
    let work_queues = format!(
        "^({}|jobs\\..+)$",
        [CHANGES_QUEUE, JOB_EVENTS_QUEUE, CONTROL_QUEUE]
            .map(escape)
            .join("|")
    );
    let mut policy = json!({ "dead-letter-exchange": DEAD_LETTER_EXCHANGE, "delivery-limit": topology::DELIVERY_LIMIT });
    if let Some(ms) = consumer_timeout_ms {
        // RabbitMQ 3.12 and later: older versions refuse the key (use rabbitmq.conf there).
        policy["consumer-timeout"] = json!(ms);
    }
    let policies = vec![json!({
        "vhost": vhost,
        "name": "pipelines-work-queues",
        "pattern": work_queues,
        "apply-to": "queues",
        "priority": 0,
        "definition": policy,
    })];
    let users_json: Vec<Value> = users
        .iter()
        .map(|user| {
            let tags: Vec<&str> = if user.role == Role::Admin { vec!["administrator"] } else { vec![] };
            json!({ "name": user.name, "password_hash": user.password_hash, "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": tags, "limits": {} })
        })
        .collect();
    let permissions: Vec<Value> = users
        .iter()
        .map(|user| {
            let (configure, write, read) = user.role.permissions();
            json!({ "user": user.name, "vhost": vhost, "configure": configure, "write": write, "read": read })
        })
        .collect();
    let topic_permissions: Vec<Value> = users
        .iter()
        .filter(|user| matches!(user.role, Role::Orchestrator | Role::DeployOrchestrator))
        .map(|user| json!({ "user": user.name, "vhost": vhost, "exchange": STATUS_EXCHANGE, "write": "^$", "read": RUN_ROUTING_KEY_PATTERN }))
        .collect();
    json!({
        "vhosts": [{ "name": vhost }],
        "users": users_json,
        "permissions": permissions,
        "topic_permissions": topic_permissions,
        "exchanges": exchanges,
        "queues": queues,
        "bindings": bindings,
        "policies": policies,
    })
}

fn arguments_json(arguments: Vec<(&'static str, Argument)>) -> Value {
    let map: BTreeMap<&str, Value> = arguments
        .into_iter()
        .map(|(key, value)| {
            let value = match value {
                Argument::Text(text) => json!(text),
                Argument::Owned(text) => json!(text),
                Argument::Number(n) => json!(n),
            };
            (key, value)
        })
        .collect();
    json!(map)
}

/// A name as a regular expression matching only itself.
fn escape(name: &str) -> String {
    name.chars()
        .flat_map(|c| match c {
            '.' | '*' | '+' | '?' | '(' | ')' | '[' | ']' | '{' | '}' | '|' | '^' | '$' | '\\' => {
                vec!['\\', c]
            }
            _ => vec![c],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_hashes_follow_rabbitmqs_sha256_scheme() {
        // salt 908d c60a, password "test12": RabbitMQ's documented example.
        assert_eq!(
            password_hash("test12", [0x90, 0x8d, 0xc6, 0x0a]),
            "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR"
        );
    }

    #[test]
    fn every_role_gets_only_its_own_queues_and_exchanges() {
        let (configure, write, read) = Role::Executor {
            account: "prod".into(),
            role: ExecutorRole::Plan,
        }
        .permissions();
        assert_eq!(configure, r"^amq\.gen-.*$");
        assert_eq!(write, r"^(pipelines\.job-events|pipelines\.dead-letter)$");
        assert_eq!(read, r"^(jobs\.prod\.plan|amq\.gen-.*)$");
        let (configure, write, _) = Role::Dispatcher.permissions();
        assert_eq!(
            configure, r"^pipelines\.claims$",
            "the dispatcher declares nothing in a least-privilege deployment but the claims \
             queue, which goes with its node"
        );
        assert!(
            write.contains(r"pipelines\.jobs") && write.contains("amq\\.default"),
            "{write}"
        );
        assert!(!Role::Orchestrator.permissions().1.contains("jobs"));
        assert_eq!(
            Role::DeployOrchestrator.permissions(),
            Role::Orchestrator.permissions(),
            "the dispatcher, not the broker, tells the two orchestrators apart"
        );
        assert_eq!(
            Role::Executor {
                account: "eu-prod".into(),
                role: ExecutorRole::Apply,
            }
            .password_variable(),
            "PIPELINES_RABBITMQ_PASSWORD_EXECUTOR_EU_PROD_APPLY"
        );
    }

    #[test]
    fn an_approver_may_only_publish_to_the_control_exchange_under_its_own_name() {
        let approver = Role::Approver("alice.smith".into());
        assert_eq!(
            approver.user("pipelines-"),
            "alice.smith",
            "named as [approvals] users names it"
        );
        assert_eq!(
            approver.permissions(),
            ("^$".into(), r"^(pipelines\.control)$".into(), "^$".into())
        );
        assert_eq!(
            approver.password_variable(),
            "PIPELINES_RABBITMQ_PASSWORD_APPROVER_ALICE_SMITH"
        );
    }

    #[test]
    fn definitions_hold_the_topology_users_and_the_status_topic_rule() {
        let topology = Topology::new(["dev".to_owned()]);
        let users: Vec<User> = Role::all(&topology)
            .into_iter()
            .map(|role| User {
                name: role.user("pipelines-"),
                role,
                password_hash: "x".into(),
            })
            .collect();
        let doc = definitions(&topology, "pipelines", &users, None);
        let names = |key: &str| -> Vec<String> {
            doc[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v["name"].as_str().unwrap().to_owned())
                .collect()
        };
        for queue in ["jobs.dev.plan", "dead.jobs.dev.plan", "jobs.dev.apply"] {
            assert!(names("queues").contains(&queue.to_owned()), "{queue}");
        }
        assert_eq!(names("exchanges").len(), 6);
        assert_eq!(
            names("users"),
            [
                "pipelines-admin",
                "pipelines-dispatcher",
                "pipelines-orchestrator",
                "pipelines-orchestrator-deploy",
                "pipelines-executor-dev-plan",
                "pipelines-executor-dev-apply"
            ]
        );
        let jobs = doc["queues"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["name"] == "jobs.dev.apply")
            .unwrap();
        assert_eq!(jobs["arguments"]["x-delivery-limit"], 10);
        assert_eq!(
            jobs["arguments"]["x-dead-letter-routing-key"],
            "jobs.dev.apply"
        );
        assert_eq!(doc["topic_permissions"][0]["read"], RUN_ROUTING_KEY_PATTERN);
        assert_eq!(
            doc["topic_permissions"][1]["user"],
            "pipelines-orchestrator-deploy"
        );
        assert_eq!(doc["topic_permissions"][1]["read"], RUN_ROUTING_KEY_PATTERN);
        let claims = doc["queues"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["name"] == CLAIMS_QUEUE)
            .unwrap();
        assert_eq!(claims["arguments"]["x-queue-type"], "classic");
        assert!(
            !claims["durable"].as_bool().unwrap(),
            "the claims queue lives and dies with its node; the dispatcher declares it again"
        );
        assert!(names("queues").contains(&"dead.pipelines.claims".to_owned()));
        let (_, _, read) = Role::Dispatcher.permissions();
        assert!(read.contains(r"pipelines\.claims"), "{read}");
        let policy = doc["policies"][0]["pattern"].as_str().unwrap();
        assert!(!policy.contains("claims"), "{policy}");
        assert!(
            doc["policies"][0]["definition"]
                .get("consumer-timeout")
                .is_none()
        );
        let newer = definitions(&topology, "pipelines", &users, Some(18_000_000));
        assert_eq!(
            newer["policies"][0]["definition"]["consumer-timeout"],
            18_000_000
        );
    }
}
