//! The long-running services, `dispatch` and `execute`. Each keeps going across broker
//! outages: it reconnects with backoff, meanwhile answering `/readyz` with "not ready", and
//! stops on SIGTERM or Ctrl-C (an executor drains first).

use std::future::Future;

use anyhow::{Context, anyhow, bail};
use broker::Broker;
use broker::backoff::Backoff;
use config::Config;
use dispatcher::Dispatcher;
use dispatcher::github::GitHub;
use dispatcher::leadership;
use dispatcher::logs::LogStore;
use dispatcher::reporter::Reporter;
use dispatcher::store::{Store, StoreLocation};
use dispatcher::web::WebLink;
use executor_worker::WorkerSettings;
use telemetry::Ops;
use tokio::sync::watch;

use crate::{DispatchArgs, ExecuteArgs, Outcome};

/// Counts every reconnection to the broker after a failed or lost connection.
const RECONNECTS: &str = "pipelines_broker_reconnects_total";

pub(crate) async fn dispatch(args: DispatchArgs) -> anyhow::Result<Outcome> {
    let config = Config::load(&args.config)?;
    let state_dir = config.dispatcher.state_dir();
    let location = StoreLocation::of(&config)?;
    // Fail at start-up, not at the first connection, when the database cannot be used.
    drop(Store::connect(&location)?);
    tracing::info!(database = %location, "Run database found.");
    let ops = Ops::default();
    serve_ops(
        args.metrics_address
            .or(config.dispatcher.metrics_address.clone()),
        &ops,
    )
    .await?;
    let shutdown = Shutdown::on_signals();
    // Several dispatchers may share a PostgreSQL database: one leads, the others stand by
    // here, serving only /metrics and /readyz (not ready), until the lead is theirs.
    let mut leadership = None;
    if location.is_postgres() {
        let lease = std::time::Duration::from_secs(config.dispatcher.leader_lease_seconds);
        let holder = leadership::holder_name();
        match leadership::lead(&location, &holder, lease, &ops, shutdown.wait()).await? {
            Some(lead) => {
                lead.exit_when_lost();
                leadership = Some(lead);
            }
            None => return Ok(Outcome::Success),
        }
    }
    let term = leadership.as_ref().map(leadership::Leadership::term);
    let lease = leadership.as_ref().map(|lead| lead.clock());
    // The reporter outlives reconnections: its pending updates survive a broker outage.
    let reporter = match &config.github {
        Some(github) => {
            let client = GitHub::from_config(github)?.with_timeout(config.timeouts.github());
            tracing::info!(api = %github.api_url, "Reporting runs to GitHub.");
            Some(Reporter::spawn(
                client,
                config.clone(),
                state_dir.clone(),
                location.clone(),
            ))
        }
        None => None,
    };
    // The logs and the web page outlive reconnections too.
    let logs = LogStore::new(&state_dir, config.dispatcher.max_log_bytes)
        .with_store(location.clone())
        .with_budget(LogStore::budget_of(&config.dispatcher));
    let web = WebLink::default();
    if let Some(address) = &config.dispatcher.web_address {
        let served = dispatcher::web::serve(
            address,
            config.clone(),
            &location,
            logs.clone(),
            web.clone(),
        )
        .await?;
        let signs_in = config.web.authenticates();
        tracing::info!(address = %served, read_only = !signs_in, "Serving the web page.");
        if !served.ip().is_loopback() && !signs_in {
            tracing::warn!(address = %served, "The web page is served beyond this machine without sign-in ([web]): anyone who reaches it can read every run and log.");
        }
    }
    // The dispatcher consumes what orchestrators and executors publish: it takes any frame
    // they could send, so that no message's headers can close its connection.
    let broker_urls: Vec<String> = config
        .broker_urls_with_password()?
        .iter()
        .map(|url| broker::with_frame_max(url, broker::UNTRUSTED_PUBLISHERS_FRAME_MAX))
        .collect();
    let running = keep_running(
        "pipelines-dispatch",
        &broker_urls,
        broker_timeouts(&config),
        &shutdown,
        &ops,
        |broker| {
            let (config, ops, shutdown) = (config.clone(), ops.clone(), shutdown.clone());
            let (state_dir, location, reporter) =
                (state_dir.clone(), location.clone(), reporter.clone());
            let (logs, web, lease) = (logs.clone(), web.clone(), lease.clone());
            async move {
                let connected = dispatcher::store::off_runtime(|| Store::connect(&location))?;
                let store = match term {
                    Some(term) => dispatcher::store::off_runtime(|| connected.fenced_by(term))?,
                    None => connected,
                };
                let mut dispatcher = Dispatcher::new(broker, config, store)?
                    .with_ops(ops)
                    .with_logs(logs)
                    .with_web(web)
                    .with_drift_schedules(state_dir, location);
                if let Some(reporter) = reporter {
                    dispatcher = dispatcher.with_reporter(reporter);
                }
                if let Some(lease) = lease {
                    dispatcher = dispatcher.with_lease(lease);
                }
                dispatcher
                    .run(shutdown.wait())
                    .await
                    .map_err(Failure::from_dispatch)
            }
        },
    );
    // Losing the lead exits the process from its own task (`exit_when_lost`).
    running.await?;
    if let Some(lead) = leadership {
        lead.resign().await;
    }
    Ok(Outcome::Success)
}

pub(crate) async fn execute(args: ExecuteArgs) -> anyhow::Result<Outcome> {
    // A worker's environment is readable by what runs as its user (`/proc/<pid>/environ`
    // before the worker hardens itself, a core dump): no password belongs there.
    for variable in ["PIPELINES_BROKER_URL", "PIPELINES_BROKER_URLS"] {
        let value = std::env::var(variable).unwrap_or_default();
        // One URL, or a list of them (`[amqp://…, amqp://…]`).
        if let Some(url) = value
            .split([',', '[', ']', '"', '\'', ' '])
            .find(|url| config::url_password(url).is_some())
        {
            bail!(
                "{variable} ({}) carries a password: an executor reads its broker password \
                 from a file (broker_password_file, or PIPELINES_BROKER_PASSWORD_FILE), never \
                 from its environment",
                config::redact_url(url)
            );
        }
    }
    executor_worker::harden_process();
    let config = Config::load(&args.config)?;
    if let Err(reason) = executor_worker::check_isolation(&config, &args.account, args.role) {
        // `pipelines config check FILE --account A --role plan` fails on this; a running
        // worker says it loudly, since single-machine setups (development, tests) have it.
        tracing::error!(%reason, "This worker is not isolated: pull-request code may read the apply identity unless executor.tool_user is set and the file is not readable by it.");
    }
    let broker_urls = config.broker_urls_with_password()?;
    let mut settings =
        WorkerSettings::from_config(&config, &args.account, args.role, args.name, args.work_dir)
            .map_err(|reason| anyhow!(reason))?;
    // Every tool runs under this binary's supervisor, so none outlives this worker.
    settings.supervisor = Some(
        std::env::current_exe().context("cannot find the pipelines binary to supervise tools")?,
    );
    let ops = Ops::default();
    serve_ops(
        args.metrics_address
            .or(config.executor.metrics_address.clone()),
        &ops,
    )
    .await?;
    tokio::spawn(executor_worker::reload_policies_on_hangup(
        args.config.clone(),
        settings.policies.clone(),
    ));
    let shutdown = Shutdown::on_signals();
    let name = format!("pipelines-execute-{}-{}", settings.account, settings.role);
    keep_running(
        &name,
        &broker_urls,
        broker_timeouts(&config),
        &shutdown,
        &ops,
        |broker| {
            let (settings, ops, shutdown) = (settings.clone(), ops.clone(), shutdown.clone());
            async move {
                executor_worker::run(broker, settings, ops, shutdown.wait())
                    .await
                    .map_err(Failure::from_execute)
            }
        },
    )
    .await?;
    Ok(Outcome::Success)
}

/// How a component's run ended badly.
#[derive(Debug)]
enum Failure {
    /// The broker (or the PostgreSQL run database) went away: reconnect and start the
    /// component again.
    Broker(anyhow::Error),
    /// Anything else: stop with the error.
    Fatal(anyhow::Error),
}

impl Failure {
    fn from_dispatch(err: dispatcher::DispatchError) -> Failure {
        if err.is_transient() {
            Failure::Broker(err.into())
        } else {
            Failure::Fatal(err.into())
        }
    }

    fn from_execute(err: executor_worker::ExecuteError) -> Failure {
        if err.is_transient() {
            Failure::Broker(err.into())
        } else {
            Failure::Fatal(err.into())
        }
    }
}

impl From<dispatcher::store::StoreError> for Failure {
    /// A lost PostgreSQL connection is waited out like a lost broker; anything else stops.
    fn from(err: dispatcher::store::StoreError) -> Failure {
        if err.is_transient() {
            Failure::Broker(err.into())
        } else {
            Failure::Fatal(err.into())
        }
    }
}

impl From<dispatcher::DispatchError> for Failure {
    fn from(err: dispatcher::DispatchError) -> Failure {
        Failure::from_dispatch(err)
    }
}

/// The broker deadlines of `[timeouts]`.
pub(crate) fn broker_timeouts(config: &Config) -> broker::BrokerTimeouts {
    broker::BrokerTimeouts {
        connect: config.timeouts.broker_connect(),
        confirm: config.timeouts.broker_confirm(),
    }
}

/// Connects, runs the component until it ends, and starts again after a broker outage, waiting
/// longer after each connection that failed or did not last (see [`Backoff`]).
async fn keep_running<F, Fut>(
    name: &str,
    nodes: &[String],
    timeouts: broker::BrokerTimeouts,
    shutdown: &Shutdown,
    ops: &Ops,
    mut component: F,
) -> anyhow::Result<()>
where
    F: FnMut(Broker) -> Fut,
    Fut: Future<Output = Result<(), Failure>>,
{
    let backoff = Backoff::default();
    ops.metrics.counter(
        RECONNECTS,
        "Reconnections to the broker after a failed or lost connection.",
    );
    let mut failures = 0_u32;
    // The node tried first: after a lost connection, the next one (the lost node may be down).
    let mut node = 0;
    loop {
        if shutdown.is_set() {
            return Ok(());
        }
        if failures > 0 {
            let delay = backoff.delay(failures - 1, random());
            tracing::info!(
                retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                failures,
                "Reconnecting to the broker after a pause."
            );
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shutdown.wait() => return Ok(()),
            }
            ops.metrics.inc(RECONNECTS, &[]);
        }
        let broker = match Broker::connect_any(nodes, node, name, timeouts).await {
            Ok((broker, reached)) => {
                if nodes.len() > 1 {
                    tracing::info!(node = %broker::redact_url(&nodes[reached]), "Connected to a broker node.");
                }
                node = reached + 1;
                broker
            }
            Err(err) if err.is_transient() => {
                tracing::warn!(error = %err, "Cannot reach the broker; trying again.");
                ops.health.set_not_ready(err.to_string());
                failures = failures.saturating_add(1);
                continue;
            }
            Err(err) => return Err(err.into()),
        };
        let connected = tokio::time::Instant::now();
        // The connection's own watch as well as the component's: an idle consumer is not always
        // told that its connection died.
        let ended = tokio::select! {
            ended = component(broker.clone()) => ended,
            lost = broker.lost() => Err(Failure::Broker(lost.into())),
        };
        broker.close().await;
        match ended {
            Ok(()) => {
                ops.health.set_ready(false);
                return Ok(());
            }
            Err(Failure::Broker(err)) => {
                let reason = format!("{err:#}");
                tracing::warn!(error = %reason, "Lost the broker; reconnecting.");
                ops.health.set_not_ready(reason);
                failures = backoff.after_connection(failures, connected.elapsed());
            }
            Err(Failure::Fatal(err)) => {
                ops.health.set_not_ready(format!("{err:#}"));
                return Err(err);
            }
        }
    }
}

/// A random number for jitter: version 4 uuids are random, and already a dependency.
fn random() -> u64 {
    let bits = uuid::Uuid::new_v4().as_u128();
    (bits >> 64) as u64 ^ bits as u64
}

/// Serves `/metrics`, `/healthz` and `/readyz` when an address is configured.
async fn serve_ops(address: Option<String>, ops: &Ops) -> anyhow::Result<()> {
    if let Some(address) = address {
        let bound = telemetry::serve(&address, ops.metrics.clone(), ops.health.clone())
            .await
            .with_context(|| format!("cannot serve metrics on {address}"))?;
        tracing::info!(address = %bound, "Serving /metrics, /healthz and /readyz.");
    }
    Ok(())
}

/// Set once SIGTERM or Ctrl-C arrives; every component run waits on it.
#[derive(Debug, Clone)]
pub(crate) struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    pub(crate) fn on_signals() -> Shutdown {
        let (set, receiver) = watch::channel(false);
        tokio::spawn(async move {
            signals().await;
            tracing::info!("Shutdown requested.");
            let _ = set.send(true);
        });
        Shutdown(receiver)
    }

    fn is_set(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once shutdown is requested (at once if it already was).
    pub(crate) fn wait(&self) -> impl Future<Output = ()> + use<> {
        let mut receiver = self.0.clone();
        async move {
            let _ = receiver.wait_for(|set| *set).await;
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn signals() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}
