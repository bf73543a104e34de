//! The long-running services, `dispatch` and `execute`. Each keeps going across broker
//! outages: it reconnects with backoff, meanwhile answering `/readyz` with "not ready", and
//! stops on SIGTERM or Ctrl-C (an executor drains first).

use std::future::Future;
use std::time::Duration;

use anyhow::{Context, anyhow};
use broker::Broker;
use config::Config;
use dispatcher::Dispatcher;
use dispatcher::github::GitHub;
use dispatcher::reporter::Reporter;
use dispatcher::store::Store;
use executor_worker::WorkerSettings;
use telemetry::Ops;
use tokio::sync::watch;

use crate::{DispatchArgs, ExecuteArgs, Outcome};

/// The longest wait between two connection attempts.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(30);

pub(crate) async fn dispatch(args: DispatchArgs) -> anyhow::Result<Outcome> {
    let config = Config::load(&args.config)?;
    let state_dir = config.dispatcher.state_dir();
    // Fail at start-up, not at the first connection, when the database cannot be used.
    drop(Store::open(&state_dir)?);
    tracing::info!(database = %state_dir.join(dispatcher::store::DATABASE_FILE).display(), "Run database found.");
    let ops = Ops::default();
    serve_ops(
        args.metrics_address
            .or(config.dispatcher.metrics_address.clone()),
        &ops,
    )
    .await?;
    // The reporter outlives reconnections: its pending updates survive a broker outage.
    let reporter = match &config.github {
        Some(github) => {
            let client = GitHub::from_config(github)?;
            tracing::info!(api = %github.api_url, "Reporting runs to GitHub.");
            Some(Reporter::spawn(client, config.clone(), state_dir.clone()))
        }
        None => None,
    };
    let shutdown = Shutdown::on_signals();
    keep_running(
        "pipelines-dispatch",
        &config.broker_url,
        &shutdown,
        &ops,
        |broker| {
            let (config, ops, shutdown) = (config.clone(), ops.clone(), shutdown.clone());
            let (state_dir, reporter) = (state_dir.clone(), reporter.clone());
            async move {
                let store = Store::open(&state_dir)?;
                let mut dispatcher = Dispatcher::new(broker, config, store)?.with_ops(ops);
                if let Some(reporter) = reporter {
                    dispatcher = dispatcher.with_reporter(reporter);
                }
                dispatcher
                    .run(shutdown.wait())
                    .await
                    .map_err(Failure::from_dispatch)
            }
        },
    )
    .await?;
    Ok(Outcome::Success)
}

pub(crate) async fn execute(args: ExecuteArgs) -> anyhow::Result<Outcome> {
    let config = Config::load(&args.config)?;
    let mut settings =
        WorkerSettings::from_config(&config, &args.account, args.name, args.work_dir)
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
    let shutdown = Shutdown::on_signals();
    let name = format!("pipelines-execute-{}", settings.account);
    keep_running(&name, &config.broker_url, &shutdown, &ops, |broker| {
        let (settings, ops, shutdown) = (settings.clone(), ops.clone(), shutdown.clone());
        async move {
            executor_worker::run(broker, settings, ops, shutdown.wait())
                .await
                .map_err(Failure::from_execute)
        }
    })
    .await?;
    Ok(Outcome::Success)
}

/// How a component's run ended badly.
#[derive(Debug)]
enum Failure {
    /// The broker went away: reconnect and start the component again.
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
    fn from(err: dispatcher::store::StoreError) -> Failure {
        Failure::Fatal(err.into())
    }
}

impl From<dispatcher::DispatchError> for Failure {
    fn from(err: dispatcher::DispatchError) -> Failure {
        Failure::from_dispatch(err)
    }
}

/// Connects, runs the component until it ends, and starts again after a broker outage.
async fn keep_running<F, Fut>(
    name: &str,
    url: &str,
    shutdown: &Shutdown,
    ops: &Ops,
    mut component: F,
) -> anyhow::Result<()>
where
    F: FnMut(Broker) -> Fut,
    Fut: Future<Output = Result<(), Failure>>,
{
    let mut delay = Duration::from_secs(1);
    loop {
        if shutdown.is_set() {
            return Ok(());
        }
        let broker = match Broker::connect(url, name).await {
            Ok(broker) => broker,
            Err(err) if err.is_transient() => {
                tracing::warn!(error = %err, retry_in_s = delay.as_secs(), "Cannot reach the broker; trying again.");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.wait() => return Ok(()),
                }
                delay = (delay * 2).min(MAX_RECONNECT_DELAY);
                continue;
            }
            Err(err) => return Err(err.into()),
        };
        delay = Duration::from_secs(1);
        // The connection's own watch as well as the component's: an idle consumer is not always
        // told that its connection died.
        let ended = tokio::select! {
            ended = component(broker.clone()) => ended,
            lost = broker.lost() => Err(Failure::Broker(lost.into())),
        };
        ops.health.set_ready(false);
        broker.close().await;
        match ended {
            Ok(()) => return Ok(()),
            Err(Failure::Broker(err)) => {
                tracing::warn!(error = %format!("{err:#}"), "Lost the broker; reconnecting.");
            }
            Err(Failure::Fatal(err)) => return Err(err),
        }
    }
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
