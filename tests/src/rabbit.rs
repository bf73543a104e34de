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
    rabbitmqctl(&[
        "list_queues",
        "-p",
        &vhost.name,
        "--no-table-headers",
        "name",
        "messages_ready",
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
