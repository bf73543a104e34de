//! A private RabbitMQ vhost per test, created with `rabbitmqctl` and deleted afterwards.

use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

const HOST: &str = "127.0.0.1:5672";

/// A vhost that exists for the lifetime of the value.
#[derive(Debug)]
pub struct Vhost {
    pub name: String,
    /// `amqp://guest:guest@127.0.0.1:5672/<name>`
    pub url: String,
}

/// Creates a fresh vhost with full permissions for guest. Panics, saying how to start
/// RabbitMQ, when it is not running: a missing broker is a failure, never a skip.
pub fn vhost() -> Vhost {
    let address = HOST.parse().unwrap();
    if let Err(err) = TcpStream::connect_timeout(&address, Duration::from_secs(3)) {
        panic!(
            "RabbitMQ is not reachable at {HOST} ({err}). Start it with `rabbitmq-server -detached` \
             (or run `bash scripts/test.sh`, which starts it), then run the tests again."
        );
    }
    let name = format!("pipelines-test-{}", uuid::Uuid::new_v4().simple());
    rabbitmqctl(&["add_vhost", &name]);
    rabbitmqctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"]);
    Vhost {
        url: format!("amqp://guest:guest@{HOST}/{name}"),
        name,
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "delete_vhost", &self.name])
            .output();
    }
}

/// Runs `rabbitmqctl`, panicking with its output on failure.
pub fn rabbitmqctl(args: &[&str]) -> String {
    let output = Command::new("rabbitmqctl")
        .arg("-q")
        .args(args)
        .output()
        .expect("rabbitmqctl must be on PATH (tests manage vhosts with it)");
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Messages ready in each queue of the vhost, by name.
pub fn queue_depths(vhost: &Vhost) -> Vec<(String, u64)> {
    queue_column(vhost, "messages_ready")
}

/// Messages in each queue of the vhost, ready or delivered and not yet settled, by name.
pub fn queue_messages(vhost: &Vhost) -> Vec<(String, u64)> {
    queue_column(vhost, "messages")
}

fn queue_column(vhost: &Vhost, column: &str) -> Vec<(String, u64)> {
    rabbitmqctl(&[
        "list_queues",
        "-p",
        &vhost.name,
        "--no-table-headers",
        "name",
        column,
    ])
    .lines()
    .filter_map(|line| {
        let mut parts = line.split_whitespace();
        Some((parts.next()?.to_owned(), parts.next()?.parse().ok()?))
    })
    .collect()
}

/// Stops the RabbitMQ application (every connection drops) until dropped, when it starts it
/// again and waits for it. Only for a test binary that runs nothing else at the same time.
#[derive(Debug)]
pub struct Outage;

impl Outage {
    pub fn begin() -> Outage {
        rabbitmqctl(&["stop_app"]);
        Outage
    }

    /// Starts the broker again now (dropping does the same).
    pub fn end(self) {}
}

impl Drop for Outage {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "start_app"])
            .output();
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "await_startup"])
            .output();
    }
}

/// A vhost set up from the shipped definitions (`deploy/rabbitmq/definitions.json`, which a
/// test keeps equal to `pipelines broker definitions`' output), imported with `rabbitmqctl
/// import_definitions`: one user per component with its narrowest permissions and the
/// `.env.example` passwords (`dev-<role>`). Only the vhost and the user names are made unique,
/// so tests run in parallel. Users and vhost are deleted on drop.
#[derive(Debug)]
pub struct LeastPrivilege {
    pub vhost: String,
    prefix: String,
    users: Vec<String>,
}

/// The shipped definitions' vhost and user-name prefix.
const SHIPPED_VHOST: &str = "pipelines";
const SHIPPED_PREFIX: &str = "pipelines-";

impl LeastPrivilege {
    /// Imports the shipped definitions into a fresh vhost, with fresh user names. `accounts`
    /// must be among the shipped ones (shared, dev, prod).
    pub fn import_shipped(root: &std::path::Path, accounts: &[&str]) -> LeastPrivilege {
        let shipped = crate::workspace_root().join("deploy/rabbitmq/definitions.json");
        let mut document: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&shipped).unwrap()).unwrap();
        let id = uuid::Uuid::new_v4().simple().to_string();
        let vhost = format!("pipelines-lp-{}", &id[..12]);
        let prefix = format!("lp{}-", &id[..8]);
        let rename = |name: &serde_json::Value| {
            let name = name.as_str().unwrap();
            let role = name
                .strip_prefix(SHIPPED_PREFIX)
                .unwrap_or_else(|| panic!("shipped user {name} lacks the {SHIPPED_PREFIX} prefix"));
            serde_json::Value::from(format!("{prefix}{role}"))
        };
        let mut users = Vec::new();
        for (section, key) in [
            ("users", "name"),
            ("permissions", "user"),
            ("topic_permissions", "user"),
        ] {
            for entry in document[section].as_array_mut().unwrap() {
                entry[key] = rename(&entry[key]);
                if section == "users" {
                    users.push(entry[key].as_str().unwrap().to_owned());
                }
            }
        }
        for entries in document.as_object_mut().unwrap().values_mut() {
            for entry in entries.as_array_mut().unwrap() {
                if entry.get("vhost").is_some() {
                    assert_eq!(entry["vhost"], SHIPPED_VHOST);
                    entry["vhost"] = vhost.clone().into();
                }
                if entry.get("name") == Some(&SHIPPED_VHOST.into()) && entry.get("vhost").is_none()
                {
                    entry["name"] = vhost.clone().into();
                }
            }
        }
        for account in accounts {
            for role in ["plan", "apply"] {
                assert!(
                    users.contains(&format!("{prefix}executor-{account}-{role}")),
                    "the shipped definitions have no {role} executor user for account {account}"
                );
            }
        }
        let file = root.join(format!("{vhost}.json"));
        std::fs::write(&file, document.to_string()).unwrap();
        let imported = LeastPrivilege {
            vhost,
            prefix,
            users,
        };
        rabbitmqctl(&["import_definitions", file.to_str().unwrap()]);
        imported
    }

    /// The user name of a role: `admin`, `dispatcher`, `orchestrator`, `executor-<account>`.
    pub fn user(&self, role: &str) -> String {
        format!("{}{role}", self.prefix)
    }

    /// The broker URL for a role without its password, for a worker that reads the password
    /// from a file.
    pub fn url_without_password(&self, role: &str) -> String {
        format!("amqp://{}@{HOST}/{}", self.user(role), self.vhost)
    }

    /// A role's password (`.env.example`'s: `dev-<role>`).
    pub fn password(&self, role: &str) -> String {
        format!("dev-{role}")
    }

    /// The broker URL for a role (passwords are `.env.example`'s: `dev-<role>`).
    pub fn url(&self, role: &str) -> String {
        format!(
            "amqp://{}:dev-{role}@{HOST}/{}",
            self.user(role),
            self.vhost
        )
    }
}

impl Drop for LeastPrivilege {
    fn drop(&mut self) {
        for user in &self.users {
            let _ = Command::new("rabbitmqctl")
                .args(["-q", "delete_user", user])
                .output();
        }
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "delete_vhost", &self.vhost])
            .output();
    }
}

/// A broker user of a test's own on a vhost, with the permissions of an approver in the
/// shipped definitions (publish to the control exchange, nothing else); deleted on drop.
#[derive(Debug)]
pub struct ControlUser {
    pub name: String,
    /// `amqp://<name>:<password>@127.0.0.1:5672/<vhost>`
    pub url: String,
}

/// Creates a [`ControlUser`] named `<role>-<random>` on `vhost`.
pub fn control_user(vhost: &Vhost, role: &str) -> ControlUser {
    let name = format!("{role}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let password = format!("pw-{name}");
    rabbitmqctl(&["add_user", &name, &password]);
    rabbitmqctl(&[
        "set_permissions",
        "-p",
        &vhost.name,
        &name,
        "^$",
        r"^pipelines\.control$",
        "^$",
    ]);
    ControlUser {
        url: format!("amqp://{name}:{password}@{HOST}/{}", vhost.name),
        name,
    }
}

impl Drop for ControlUser {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "delete_user", &self.name])
            .output();
    }
}
