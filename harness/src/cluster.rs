//! A three-node RabbitMQ cluster on this machine, for the tests that lose a broker node: each
//! node is the installed server under its own node name, ports and data directory, joined to
//! the first with `rabbitmqctl join_cluster`, so quorum queues get a member on every node.
//! Every node is stopped and its data removed when the cluster is dropped.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// One node of a [`Cluster`].
#[derive(Debug)]
pub struct Node {
    /// The Erlang node name, `pt<id>-<i>@localhost`.
    pub name: String,
    pub port: u16,
    /// `amqp://guest:guest@127.0.0.1:<port>/%2f`
    pub url: String,
    running: bool,
}

/// Three RabbitMQ nodes in one cluster, for the lifetime of the value.
#[derive(Debug)]
pub struct Cluster {
    pub nodes: Vec<Node>,
    dir: PathBuf,
}

/// A TCP port nothing listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

/// `rabbitmqctl -n NODE ARGS`: its output, or why it failed.
fn ctl(node: &str, args: &[&str]) -> Result<String, String> {
    let output = Command::new("rabbitmqctl")
        .args(["-q", "-n", node])
        .args(args)
        .output()
        .map_err(|err| format!("rabbitmqctl: {err}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "rabbitmqctl -n {node} {args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

impl Cluster {
    /// Starts three nodes and joins them into one cluster. Panics, saying what failed, when
    /// the installed server cannot (it runs as the `rabbitmq` user, so the data directories
    /// are made for it).
    pub fn start() -> Cluster {
        let id = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let dir = std::env::temp_dir().join(format!("pipelines-cluster-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cluster = Cluster {
            nodes: Vec::new(),
            dir,
        };
        for i in 1..=3 {
            let port = free_port();
            let node = Node {
                name: format!("pt{id}-{i}@localhost"),
                port,
                url: format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
                running: false,
            };
            cluster.launch(&node);
            cluster.nodes.push(Node {
                running: true,
                ..node
            });
        }
        let first = cluster.nodes[0].name.clone();
        for node in &cluster.nodes[1..] {
            for args in [
                &["stop_app"][..],
                &["join_cluster", &first][..],
                &["start_app"][..],
            ] {
                ctl(&node.name, args).unwrap_or_else(|err| panic!("{err}"));
            }
        }
        let status = ctl(&first, &["cluster_status", "--formatter", "json"]).unwrap();
        let running: serde_json::Value = serde_json::from_str(&status).unwrap();
        assert_eq!(
            running["running_nodes"].as_array().map(Vec::len),
            Some(3),
            "the three nodes run as one cluster: {status}"
        );
        cluster
    }

    /// Starts `node` from the installed server and waits until it answers.
    fn launch(&self, node: &Node) {
        let data = self.dir.join(&node.name);
        std::fs::create_dir_all(&data).unwrap();
        let chowned = Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(&self.dir)
            .status()
            .expect("chown");
        assert!(
            chowned.success(),
            "cannot give {} to rabbitmq",
            self.dir.display()
        );
        let dist_port = free_port();
        let started = Command::new("rabbitmq-server")
            .arg("-detached")
            .env("RABBITMQ_NODENAME", &node.name)
            .env("RABBITMQ_NODE_PORT", node.port.to_string())
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", data.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", data.join("log"))
            .env("RABBITMQ_PID_FILE", data.join("pid"))
            // No plugins (the management listener's port is the shared node's) and no config
            // file: the defaults, guest allowed from this machine.
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                data.join("enabled_plugins"),
            )
            .env("RABBITMQ_CONFIG_FILE", data.join("none"))
            .env(
                "RABBITMQ_ADVANCED_CONFIG_FILE",
                data.join("none-advanced.config"),
            )
            .status()
            .expect("rabbitmq-server must be installed (scripts/test.sh installs it)");
        assert!(
            started.success(),
            "rabbitmq-server -detached for {}",
            node.name
        );
        crate::poll_until(
            Duration::from_secs(120),
            &format!("RabbitMQ node {} to start", node.name),
            || ctl(&node.name, &["await_startup"]).ok(),
        );
    }

    /// The nodes' URLs, first node first.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|node| node.url.clone()).collect()
    }

    /// Stops node `i` (its Erlang VM: every connection to it drops) and waits until the
    /// others see it gone.
    pub fn stop(&mut self, i: usize) {
        let name = self.nodes[i].name.clone();
        ctl(&name, &["stop"]).unwrap_or_else(|err| panic!("{err}"));
        self.nodes[i].running = false;
        let other = self
            .nodes
            .iter()
            .find(|node| node.running)
            .map(|node| node.name.clone())
            .expect("a node still runs");
        crate::poll_until(
            Duration::from_secs(60),
            &format!("the cluster to see {name} stopped"),
            || {
                let status = ctl(&other, &["cluster_status", "--formatter", "json"]).ok()?;
                let status: serde_json::Value = serde_json::from_str(&status).ok()?;
                let running = status["running_nodes"].as_array()?;
                (!running
                    .iter()
                    .any(|node| node.as_str() == Some(name.as_str())))
                .then_some(())
            },
        );
    }

    /// `rabbitmqctl list_queues` on a running node, for a failure's explanation.
    pub fn queues(&self) -> String {
        self.nodes
            .iter()
            .find(|node| node.running)
            .and_then(|node| {
                ctl(
                    &node.name,
                    &[
                        "list_queues",
                        "name",
                        "type",
                        "messages",
                        "leader",
                        "members",
                    ],
                )
                .ok()
            })
            .unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in self.nodes.iter().filter(|node| node.running) {
            let _ = ctl(&node.name, &["stop"]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
