//! The subcommands: each loads what it needs, wires the libraries together and reports.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use broker::{Broker, Topology};
use config::Config;
use dispatcher::Dispatcher;
use dispatcher::logs::LogStore;
use dispatcher::store::{Store, StoreLocation};
use dispatcher::web::WebLink;
use executor_worker::WorkerSettings;
use orchestrator::submit::{follow, submit};
use orchestrator::{DetectOutcome, DetectRequest, render};
use proto_types::untrusted_text::printable;
use proto_types::{EventKind, ExecutorRole, RunState, RunStatus, Trigger, run_status_json};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::output::{errln, out, outln};
use crate::{
    ApprovalArgs, CancelArgs, ChangeArgs, DriftStatusArgs, Format, OrchestrateArgs, Outcome,
    RunArgs, StatusArgs,
};

pub(crate) async fn orchestrate(args: OrchestrateArgs) -> anyhow::Result<Outcome> {
    // The root of the run's trace: the dispatcher, the jobs and the reports continue it.
    let span = tracing::info_span!(
        "orchestrate",
        run_id = tracing::field::Empty,
        event = tracing::field::Empty,
        repository = tracing::field::Empty
    );
    orchestrate_in(args, span.clone()).instrument(span).await
}

async fn orchestrate_in(args: OrchestrateArgs, span: tracing::Span) -> anyhow::Result<Outcome> {
    let range = resolve_range(&args.change)?;
    if !args.units.is_empty() && range.event != EventKind::Drift {
        bail!("--units selects the units of a drift check: pass --event drift");
    }
    let event = if range.event == EventKind::Drift {
        let Some(event) = drift_event(&args, &range)? else {
            return Ok(Outcome::Success);
        };
        event
    } else {
        let detected = detect(&range, &args.change.repo)?;
        if args.dry_run {
            let report = detected.report();
            match args.format {
                Format::Json => outln!("{}", report.to_json()),
                Format::Text => out!("{}", render::detection_table(&detected)),
            }
            return Ok(Outcome::Success);
        }
        for warning in &detected.detection.warnings {
            errln!("warning: {}", printable(warning));
        }
        if let Some(outcome) = refuse_if_needed(&detected) {
            return Ok(outcome);
        }
        detected.change_event(
            &repository_name(&args.change)?,
            trigger(&range, &args.change.repo)?,
        )
    };
    span.record("run_id", tracing::field::display(event.id));
    span.record("event", event.trigger.kind().as_str());
    span.record("repository", event.repository.as_str());
    let timeouts = broker::BrokerTimeouts::default();
    let (broker, _) =
        Broker::connect_any(&args.broker, 0, "pipelines-orchestrate", timeouts).await?;
    // Subscribe before publishing, so that not even the first status is missed.
    let mut follower = match args.wait {
        true => Some(broker.follow_run(event.id).await?),
        false => None,
    };
    submit(&broker, &event, args.id_token.as_deref()).await?;
    errln!(
        "Submitted run {} ({} unit(s)).",
        event.id,
        event
            .changes
            .iter()
            .flat_map(|change| &change.units)
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    );
    let Some(follower) = follower.as_mut() else {
        if args.format == Format::Json {
            outln!("{{\"run_id\": \"{}\"}}", event.id);
        }
        broker.close().await;
        return Ok(Outcome::Success);
    };
    let waited = tokio::time::timeout(
        Duration::from_secs(args.wait_timeout),
        follow(follower, progress_printer()),
    )
    .await;
    broker.close().await;
    let status = waited.map_err(|_| {
        anyhow!(
            "run {} did not finish within {} s (--wait-timeout)",
            event.id,
            args.wait_timeout
        )
    })??;
    Ok(report_run(&status, args.format))
}

/// The event of a drift check: every unit of the head matching `--units`. `None` after a
/// dry run, which prints the units instead.
fn drift_event(
    args: &OrchestrateArgs,
    range: &Range,
) -> anyhow::Result<Option<proto_types::ChangeEvent>> {
    let globs: Vec<String> = if args.units.is_empty() {
        vec!["**".to_owned()]
    } else {
        args.units.clone()
    };
    let selection =
        config::UnitSelection::new(&globs, &[]).map_err(|reason| anyhow!("--units: {reason}"))?;
    let check = orchestrator::drift_check(&args.change.repo, &range.head, |unit| {
        selection.includes(unit)
    })?;
    let branch = range
        .branch
        .clone()
        .or_else(github_ref_name)
        .or_else(|| orchestrator::pushed_branch(&args.change.repo, &range.head))
        .context("cannot tell which branch is checked for drift: pass --branch")?;
    let event = check.change_event(&repository_name(&args.change)?, &branch);
    if args.dry_run {
        let report = proto_types::DetectionReport {
            base_sha: event.base_sha.clone(),
            head_sha: event.head_sha.clone(),
            event: EventKind::Drift,
            changes: event.changes.clone(),
            warnings: Vec::new(),
        };
        match args.format {
            Format::Json => outln!("{}", report.to_json()),
            Format::Text => {
                outln!(
                    "Drift check of {branch} at {}: {} unit(s)",
                    short(&event.head_sha),
                    check.units.len()
                );
                for unit in &check.units {
                    outln!("  {}", printable(unit));
                }
            }
        }
        return Ok(None);
    }
    if check.units.is_empty() {
        bail!(
            "no unit of {} matches --units {}",
            short(&check.head_sha),
            globs.join(" ")
        );
    }
    Ok(Some(event))
}

pub(crate) async fn run(args: RunArgs) -> anyhow::Result<Outcome> {
    let range = resolve_range(&args.change)?;
    if range.event == EventKind::Drift {
        bail!(
            "embedded mode runs pull requests and pushes; a drift check needs the dispatcher's \
             drift report: use `pipelines orchestrate --event drift`"
        );
    }
    let detected = detect(&range, &args.change.repo)?;
    for warning in &detected.detection.warnings {
        errln!("warning: {}", printable(warning));
    }
    if let Some(outcome) = refuse_if_needed(&detected) {
        return Ok(outcome);
    }
    let trigger = trigger(&range, &args.change.repo)?;
    let repository = repository_name(&args.change)?;
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => {
            let url = std::fs::canonicalize(&args.change.repo)
                .with_context(|| format!("cannot resolve {}", args.change.repo.display()))?;
            let deploy_branch = match &trigger {
                Trigger::Push { branch } | Trigger::Drift { branch } => branch.as_str(),
                Trigger::PullRequest { .. } => "main",
            };
            Config::embedded(&repository, &url.to_string_lossy(), deploy_branch)
        }
    };
    // The plans run on this machine, and a plan's code can send any header from 127.0.0.1,
    // where the page would take `proxy_header` as a signed-in user's word.
    if args.web.is_some() && config.web.proxy_header.is_some() {
        bail!(
            "config key `web.proxy_header`: `pipelines run --web` runs plans on this machine, \
             whose code could send that header from here and approve or cancel as anyone; sign \
             in with `web.tokens` instead, or drop --web"
        );
    }
    // In one process over the in-memory broker there are no broker users: messages carry no
    // `user_id`, so a deployment's sender checks would refuse every event.
    config.dispatcher.orchestrator_users.clear();
    config.dispatcher.deploy_orchestrator_users.clear();
    config.dispatcher.executor_users = None;
    // Nor is there a CI run to vouch for a pull request: whoever runs this is the operator.
    config.dispatcher.oidc = None;
    let work_dir = tempfile::Builder::new()
        .prefix("pipelines-run-")
        .tempdir()
        .context("cannot create a work directory")?;

    let broker = Broker::in_memory();
    broker
        .declare_topology(&Topology::new(config.account_names()))
        .await?;
    let (stop, stopped) = watch::channel(false);
    let until_stopped = |mut stopped: watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    let mut components: JoinSet<anyhow::Result<()>> = JoinSet::new();
    // The run ends with the command: its state needs no file, unless the web page reads it.
    let logs = LogStore::new(work_dir.path(), config.dispatcher.max_log_bytes)
        .with_budget(LogStore::budget_of(&config.dispatcher));
    let web = WebLink::default();
    let store = match &args.web {
        Some(_) => Store::open(work_dir.path())?,
        None => Store::in_memory()?,
    };
    let mut dispatcher = Dispatcher::new(broker.clone(), config.clone(), store)?;
    // Logs are streamed and kept only for the page: nobody else would read them.
    if args.web.is_some() {
        dispatcher = dispatcher.with_logs(logs.clone()).with_web(web.clone());
    }
    let served = match &args.web {
        Some(address) => Some(
            dispatcher::web::serve(
                address,
                config.clone(),
                &StoreLocation::state_dir(work_dir.path()),
                logs,
                web,
            )
            .await?,
        ),
        None => None,
    };
    let ops = telemetry::Ops::default();
    components.spawn({
        let stopped = until_stopped(stopped.clone());
        async move { Ok(dispatcher.run(stopped).await?) }
    });
    // Both roles of every account in this one process: a development mode. Deployed, plan
    // and apply workers never share a process, a machine's identity or a disk.
    for account in config.account_names() {
        for (role, i) in ExecutorRole::ALL
            .into_iter()
            .flat_map(|role| (1..=args.workers).map(move |i| (role, i)))
        {
            let name = format!("embedded-{account}-{role}-{i}");
            let dir = work_dir.path().join(&name);
            let mut settings =
                WorkerSettings::from_config(&config, &account, role, Some(name), Some(dir))
                    .map_err(|reason| anyhow!(reason))?;
            settings.supervisor = Some(
                std::env::current_exe()
                    .context("cannot find the pipelines binary to supervise tools")?,
            );
            settings.stream_logs &= args.web.is_some();
            let stopped = until_stopped(stopped.clone());
            let (broker, ops) = (broker.clone(), ops.clone());
            components.spawn(async move {
                Ok(executor_worker::run(broker, settings, ops, stopped).await?)
            });
        }
    }

    let event = detected.change_event(&repository, trigger);
    let mut follower = broker.follow_run(event.id).await?;
    submit(&broker, &event, None).await?;
    if let Some(address) = served {
        errln!("Follow the run at http://{address}/runs/{}", event.id);
    }
    errln!(
        "Running {} unit(s) of {} ({} {}..{}) in embedded mode.",
        detected.detection.units().len(),
        repository,
        event.trigger.kind(),
        short(&event.base_sha),
        short(&event.head_sha)
    );
    let status = tokio::select! {
        status = follow(&mut follower, progress_printer()) => status?,
        Some(ended) = components.join_next() => {
            // A component stopped before the run ended: that is a bug or a broken setup.
            match ended {
                Ok(Ok(())) => bail!("an embedded component stopped unexpectedly"),
                Ok(Err(err)) => return Err(err.context("an embedded component failed")),
                Err(err) => bail!("an embedded component panicked: {err}"),
            }
        }
    };
    let outcome = report_run(&status, args.format);
    if let Some(address) = served {
        // The page stays until the user has seen it; the components stay too, idle.
        errln!(
            "The run's page stays at http://{address}/runs/{}; press Ctrl-C to stop.",
            event.id
        );
        let _ = tokio::signal::ctrl_c().await;
    }
    let _ = stop.send(true);
    while let Some(ended) = components.join_next().await {
        if let Ok(Err(err)) = ended {
            tracing::warn!(error = %err, "Component failed while stopping.");
        }
    }
    Ok(outcome)
}

pub(crate) async fn broker_setup(path: &Path) -> anyhow::Result<Outcome> {
    let config = Config::load(path)?;
    let broker = connect(&config, "pipelines-setup").await?;
    let topology = Topology::new(config.account_names());
    broker.declare_topology(&topology).await?;
    broker.close().await;
    outln!(
        "Declared exchanges and queues for accounts: {}",
        config.account_names().join(", ")
    );
    Ok(Outcome::Success)
}

pub(crate) fn broker_definitions(
    path: &Path,
    vhost: &str,
    prefix: &str,
    consumer_timeout_minutes: Option<u64>,
) -> anyhow::Result<Outcome> {
    use broker::definitions::{self, Role, User};
    let config = Config::load(path)?;
    let topology = Topology::new(config.account_names());
    let mut users = Vec::new();
    for role in Role::all(&topology) {
        let name = role.user(prefix);
        let password = match std::env::var(role.password_variable()) {
            Ok(password) if !password.is_empty() => password,
            _ => {
                let generated = format!(
                    "{}{}",
                    uuid::Uuid::new_v4().simple(),
                    uuid::Uuid::new_v4().simple()
                );
                errln!("{name} {generated}");
                generated
            }
        };
        let salt: [u8; 4] = uuid::Uuid::new_v4().as_bytes()[..4]
            .try_into()
            .expect("4 bytes");
        let password_hash = definitions::password_hash(&password, salt);
        users.push(User {
            role,
            name,
            password_hash,
        });
    }
    let timeout_ms = consumer_timeout_minutes.map(|minutes| minutes * 60_000);
    let document = definitions::definitions(&topology, vhost, &users, timeout_ms);
    outln!("{}", serde_json::to_string_pretty(&document)?);
    Ok(Outcome::Success)
}

/// The run database to read: the state directory given, the config's `dispatcher.store`
/// (or its `state_dir`), else the default state directory.
fn store_location(
    dir: Option<&PathBuf>,
    config: Option<&PathBuf>,
) -> anyhow::Result<StoreLocation> {
    Ok(match (dir, config) {
        (Some(dir), _) => StoreLocation::state_dir(dir),
        (None, Some(path)) => StoreLocation::of(&Config::load(path)?)?,
        (None, None) => {
            StoreLocation::state_dir(&config::DispatcherSettings::default().state_dir())
        }
    })
}

/// `pipelines store migrate`: copies one run database into an empty other, with progress.
pub(crate) fn store_migrate(
    from: &str,
    to: &str,
    password_file: Option<&std::path::Path>,
) -> anyhow::Result<Outcome> {
    let password = password_file
        .map(|path| {
            config::read_password(path).map_err(|reason| anyhow!("--password-file: {reason}"))
        })
        .transpose()?;
    let location = |flag: &str, url: &str| -> anyhow::Result<StoreLocation> {
        if config::url_password(url).is_some() {
            bail!(
                "{flag} {} has a password: give it with --password-file",
                config::redact_url(url)
            );
        }
        let url = match (&password, url.starts_with("postgres")) {
            (Some(password), true) => config::with_password(url, password)
                .with_context(|| format!("{flag} {url:?} names no user for the password"))?,
            _ => url.to_owned(),
        };
        StoreLocation::parse(&url).map_err(|reason| anyhow!("{flag}: {reason}"))
    };
    let (from, to) = (location("--from", from)?, location("--to", to)?);
    anyhow::ensure!(from != to, "--from and --to are the same database ({from})");
    let source = Store::connect_read_only(&from).with_context(|| format!("--from {from}"))?;
    let target = Store::connect(&to).with_context(|| format!("--to {to}"))?;
    errln!("Copying {from} into {to}");
    let started = std::time::Instant::now();
    let copied = source.copy_into(&target, |table, rows| {
        errln!("  {table}: {rows} rows");
    })?;
    let rows: usize = copied.iter().map(|(_, rows)| rows).sum();
    errln!(
        "Copied {rows} rows in {:.1} s. Point [dispatcher] store at {to} and start the dispatchers.",
        started.elapsed().as_secs_f64()
    );
    Ok(Outcome::Success)
}

pub(crate) fn drift_status(args: DriftStatusArgs) -> anyhow::Result<Outcome> {
    let store = Store::connect_read_only(&store_location(
        args.state_dir.as_ref(),
        args.config.as_ref(),
    )?)?;
    let units = store.drift_units(args.repository.as_deref())?;
    match args.format {
        Format::Json => outln!("{}", proto_types::to_json(&units)),
        Format::Text => out!(
            "{}",
            dispatcher::status::render_drift(&units, dispatcher::clock::now_ms())
        ),
    }
    Ok(Outcome::Success)
}

pub(crate) fn status(args: StatusArgs) -> anyhow::Result<Outcome> {
    let store = Store::connect_read_only(&store_location(
        args.state_dir.as_ref(),
        args.config.as_ref(),
    )?)?;
    let now = dispatcher::clock::now_ms();
    match &args.run_id {
        Some(id) => {
            let detail = store.run_detail(id, now)?;
            match args.format {
                Format::Json => outln!("{}", proto_types::to_json(&detail)),
                Format::Text => out!("{}", dispatcher::status::render_run(&detail, now)),
            }
        }
        None => {
            let runs = store.list_runs(args.limit)?;
            match args.format {
                Format::Json => outln!("{}", proto_types::to_json(&runs)),
                Format::Text => out!("{}", dispatcher::status::render_runs(&runs, now)),
            }
        }
    }
    Ok(Outcome::Success)
}

pub(crate) async fn cancel(args: CancelArgs) -> anyhow::Result<Outcome> {
    let config = Config::load(&args.config)?;
    let run_id = resolve_run_id(&config, &args.run_id)?;
    let order = proto_types::CancelRun {
        run_id,
        reason: args.reason,
        requested_by: requested_by(),
    };
    send_control(&config, "pipelines-cancel", &order).await?;
    errln!("Asked the dispatcher to cancel run {run_id}.");
    Ok(Outcome::Success)
}

/// `pipelines approve` and `pipelines reject`.
pub(crate) async fn approve(
    args: ApprovalArgs,
    verdict: proto_types::ApprovalVerdict,
) -> anyhow::Result<Outcome> {
    let config = Config::load(&args.config)?;
    if args.reason.trim().is_empty() {
        return Err(anyhow!(
            "--reason is empty: say why, it is recorded and shown"
        ));
    }
    if let Some(unit) = &args.unit {
        config::check_path(unit).map_err(|err| anyhow!("--unit: {err}"))?;
    }
    // The dispatcher is the judge; this only spares an approver a silent refusal.
    let user = config::url_user(config.first_broker_node()).unwrap_or("(none)");
    if !config.approvals.is_approver(user) {
        return Err(anyhow!(
            "broker user {user:?} may not {}: approvals.users is [{}]. Log in as an approver \
             with PIPELINES_BROKER_URL (and PIPELINES_BROKER_PASSWORD_FILE)",
            verdict.as_str(),
            config.approvals.users.join(", ")
        ));
    }
    let run_id = resolve_run_id(&config, &args.run_id)?;
    let order = proto_types::ApprovalOrder {
        run_id,
        unit: args.unit.clone(),
        verdict,
        reason: args.reason,
        requested_by: requested_by(),
    };
    send_control(&config, "pipelines-approve", &order).await?;
    let what = args.unit.map_or_else(
        || "every job awaiting approval".to_owned(),
        |u| format!("unit {u}"),
    );
    errln!(
        "Asked the dispatcher to {} {what} of run {run_id} as {user}; `pipelines status {run_id}` shows the result.",
        verdict.as_str()
    );
    Ok(Outcome::Success)
}

/// A full run id, or the one run a prefix names in the dispatcher's database.
fn resolve_run_id(config: &Config, id: &str) -> anyhow::Result<uuid::Uuid> {
    match id.parse::<uuid::Uuid>() {
        Ok(id) => Ok(id),
        Err(_) => {
            let store = Store::connect_read_only(&StoreLocation::of(config)?)
                .context("a run id prefix is looked up in the dispatcher's database")?;
            Ok(store.run_detail(id, 0)?.run.run_id)
        }
    }
}

/// `user@host`, for the record (the broker user is the authority).
fn requested_by() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "someone".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{user}@{}", host.trim())
}

/// Publishes an operator's order to the dispatcher's control queue, confirmed.
async fn send_control<P: proto_types::Payload>(
    config: &Config,
    name: &str,
    order: &P,
) -> anyhow::Result<()> {
    let broker = connect(config, name).await?;
    let body = order.encode();
    let id = uuid::Uuid::new_v4().to_string();
    let headers = broker::Headers::new();
    broker
        .publish(
            broker::Route::Control,
            broker::Outgoing::new(&body, &id, &headers),
        )
        .await?;
    broker.close().await;
    Ok(())
}

/// `pipelines policy test`: the configured sets on one plan, as an executor evaluates them.
pub(crate) fn policy_test(
    config_path: &Path,
    plan_path: &Path,
    mut context: executor_worker::policy::PlanContext,
    json: bool,
) -> anyhow::Result<Outcome> {
    let config = Config::load(config_path)?;
    if config.account(&context.account).is_none() {
        return Err(anyhow!(
            "account {:?} is not in {} (known: {})",
            context.account,
            config_path.display(),
            config.account_names().join(", ")
        ));
    }
    if context.repository.is_empty() {
        context.repository = config
            .repositories
            .first()
            .map(|repo| repo.name.clone())
            .unwrap_or_default();
    }
    let plan = std::fs::read(plan_path)
        .with_context(|| format!("cannot read the plan {}", plan_path.display()))?;
    let policies = executor_worker::policy::Policies::load(&config.policies, &config.policy);
    if !policies.govern(&context.account, &context.unit) {
        errln!(
            "No policy set in {} governs {} of account {}: an executor would not check this plan.",
            config_path.display(),
            context.unit,
            context.account
        );
    }
    let report = policies.evaluate(&plan, &context);
    if json {
        outln!("{}", proto_types::to_json(&report));
    } else {
        out!("{}", executor_worker::policy::render_report(&report));
    }
    Ok(if report.blocks() {
        Outcome::JobFailed
    } else {
        Outcome::Success
    })
}

pub(crate) fn config_check(
    path: &Path,
    worker: Option<(String, ExecutorRole)>,
) -> anyhow::Result<Outcome> {
    let config = Config::load(path)?;
    // What a worker's checks found, to say after the summary of the file.
    let (mut checked, mut warnings) = (Vec::new(), Vec::new());
    if let Some((account, role)) = &worker {
        executor_worker::check_isolation(&config, account, *role)
            .map_err(|reason| anyhow!("{}: {reason}", path.display()))?;
        // What the worker checks at start, read-only: the work and log directories it makes
        // then are checked then.
        let settings = WorkerSettings::from_config(&config, account, *role, None, None)
            .map_err(|reason| anyhow!("{}: {reason}", path.display()))?;
        if let Some(source) = executor_worker::check_host(&settings)
            .map_err(|err| anyhow!("{}: {err}", path.display()))?
        {
            warnings.push(format!(
                "registry credentials reach every tool ({source}), so a pull request's plan can \
                 read them: give plan workers a Terraform CLI configuration and tool_env without \
                 credentials"
            ));
        }
        // Said as checked, no more: what the settings give no path or user for was not.
        let plan = *role == ExecutorRole::Plan;
        if plan {
            checked.push("it cannot read the apply identity's token file (if any)".to_owned());
        }
        if settings.tools.user.is_some() && settings.broker_password_file.is_some() {
            checked.push("its tool user cannot read the broker password file".to_owned());
        }
        checked.push(format!(
            "what its tools read (PATH, tf_binary, plugin cache, mirrors, CLI configuration) is \
             {}",
            if plan && settings.tools.user.is_some() {
                "writable neither by every user nor by its tool user"
            } else {
                "not writable by every user"
            }
        ));
        if settings.tools.user.is_none() {
            warnings.push(
                "no tool user is set here (executor.tool_user, or \
                 PIPELINES_EXECUTOR__TOOL_USER): a worker started so runs the tools as itself, \
                 and they may read and write all it may; check with the worker's environment \
                 to check its tool user"
                    .to_owned(),
            );
        }
    }
    outln!("{} is valid.", path.display());
    outln!(
        "broker {}",
        config
            .broker_nodes()
            .into_iter()
            .map(broker::redact_url)
            .collect::<Vec<_>>()
            .join(", ")
    );
    for repo in &config.repositories {
        outln!(
            "repository {}: {} (deploys from {})",
            repo.name,
            config::redact_url(&repo.url),
            repo.deploy_branch
        );
    }
    if let Some((account, role)) = &worker {
        let article = if *role == ExecutorRole::Apply {
            "an"
        } else {
            "a"
        };
        outln!(
            "{article} {role} worker of {account} can start here: {}",
            checked.join("; ")
        );
        for warning in &warnings {
            outln!("warning: {warning}");
        }
    }
    for account in &config.accounts {
        let cap = match account.max_concurrent_jobs {
            0 => "no cap".to_owned(),
            n => format!("at most {n} jobs at once"),
        };
        let credentials = |name: &Option<String>| {
            name.clone()
                .unwrap_or_else(|| "the executor's environment".into())
        };
        outln!(
            "account {}: {} ({cap}; job timeout {}; plans as {}, applies as {})",
            account.name,
            account.paths.join(", "),
            account.job_timeout,
            credentials(&account.plan_credentials),
            credentials(&account.apply_credentials),
        );
        if config.applies_as_the_host(account) {
            outln!(
                "warning: account {}: applies run as the executor host's own identity \
                 (apply_credentials unset, or provider \"none\": the executor's environment \
                 and the host's cloud identity), which a plan's code on such a host takes from \
                 the instance metadata endpoint: run plan workers on other hosts, or block \
                 169.254.169.254 for their tool users (SECURITY.md)",
                account.name
            );
        }
    }
    outln!(
        "dispatcher: state in {}, run database {}, worker leases of {} s",
        config.dispatcher.state_dir().display(),
        StoreLocation::of(&config)?,
        config.dispatcher.lease_seconds
    );
    outln!(
        "retries: up to {} attempts, backoff from {} s, {} retryable pattern(s)",
        config.retry.max_attempts,
        config.retry.backoff_seconds,
        config.retry.patterns.len()
    );
    let gated: Vec<String> = config
        .accounts
        .iter()
        .filter(|account| account.require_approval)
        .map(|account| format!("account {}", account.name))
        .chain(config.approvals.units.iter().cloned())
        .collect();
    if !gated.is_empty() {
        outln!(
            "approvals: applies of {} wait for {} (cancelled after {})",
            gated.join(", "),
            config.approvals.users.join(" or "),
            config.approvals.approval_timeout
        );
    }
    Ok(Outcome::Success)
}

/// The commits to compare, from flags or, in GitHub Actions, from the event payload.
#[derive(Debug)]
struct Range {
    base: Option<String>,
    head: String,
    event: EventKind,
    pr: Option<u64>,
    branch: Option<String>,
}

fn resolve_range(change: &ChangeArgs) -> anyhow::Result<Range> {
    if change.event == Some(EventKind::Drift) {
        return Ok(Range {
            base: None,
            head: change.head.clone().unwrap_or_else(|| "HEAD".to_owned()),
            event: EventKind::Drift,
            pr: None,
            branch: change.branch.clone(),
        });
    }
    if change.event.is_some() && change.head.is_none() {
        bail!("--event pull-request and --event push need --head (and --base)");
    }
    if let (Some(head), Some(event)) = (&change.head, change.event) {
        return Ok(Range {
            base: change.base.clone(),
            head: head.clone(),
            event,
            pr: change.pr,
            branch: change.branch.clone(),
        });
    }
    let (Ok(name), Ok(path)) = (
        std::env::var("GITHUB_EVENT_NAME"),
        std::env::var("GITHUB_EVENT_PATH"),
    ) else {
        bail!(
            "pass --head and --event (and --base), or run inside GitHub Actions where the event payload says what to compare"
        );
    };
    let payload = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read GITHUB_EVENT_PATH {path}"))?;
    let event =
        orchestrator::github::from_payload(&name, &payload).map_err(|reason| anyhow!(reason))?;
    Ok(Range {
        base: change.base.clone().or(Some(event.base)),
        head: event.head,
        event: event.event,
        pr: change.pr.or(event.pr),
        branch: change.branch.clone().or(event.branch),
    })
}

fn detect(range: &Range, repo: &Path) -> anyhow::Result<DetectOutcome> {
    Ok(orchestrator::detect_changes(DetectRequest {
        repo,
        base: range.base.as_deref(),
        head: &range.head,
        event: range.event,
    })?)
}

fn trigger(range: &Range, repo: &Path) -> anyhow::Result<Trigger> {
    match range.event {
        EventKind::Push => {
            let branch = range
                .branch
                .clone()
                .or_else(github_ref_name)
                .or_else(|| orchestrator::pushed_branch(repo, &range.head))
                .context("cannot tell which branch was pushed: pass --branch")?;
            Ok(Trigger::Push { branch })
        }
        EventKind::Drift => bail!("a drift check is no change between commits"),
        EventKind::PullRequest => {
            let base = range.base.clone().unwrap_or_default();
            Ok(Trigger::PullRequest {
                number: range.pr,
                base_branch: orchestrator::branch_named(repo, &base).unwrap_or(base),
                head_branch: range
                    .branch
                    .clone()
                    .or_else(|| orchestrator::branch_named(repo, &range.head))
                    .unwrap_or_else(|| range.head.clone()),
            })
        }
    }
}

/// Refusals stop a run before anything is published.
fn refuse_if_needed(detected: &DetectOutcome) -> Option<Outcome> {
    if detected.detection.refusals.is_empty() {
        return None;
    }
    for refusal in &detected.detection.refusals {
        errln!("refused: {}", printable(refusal));
    }
    errln!("Nothing was submitted: the change deletes units that others still depend on.");
    Some(Outcome::JobFailed)
}

/// In GitHub Actions, the branch of a push event.
fn github_ref_name() -> Option<String> {
    if std::env::var("GITHUB_ACTIONS").ok()? != "true" {
        return None;
    }
    std::env::var("GITHUB_REF_NAME")
        .ok()
        .filter(|name| !name.is_empty())
}

fn repository_name(change: &ChangeArgs) -> anyhow::Result<String> {
    if let Some(name) = &change.repo_name {
        return Ok(name.clone());
    }
    let path: PathBuf = std::fs::canonicalize(&change.repo)
        .with_context(|| format!("cannot resolve {}", change.repo.display()))?;
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .context("cannot name the repository: pass --repo-name")
}

async fn connect(config: &Config, name: &str) -> anyhow::Result<Broker> {
    let timeouts = crate::services::broker_timeouts(config);
    let nodes = config.broker_urls_with_password()?;
    Ok(Broker::connect_any(&nodes, 0, name, timeouts).await?.0)
}

/// Prints one line per unit transition to stderr as statuses arrive.
fn progress_printer() -> impl FnMut(&RunStatus) {
    let mut previous: Option<RunStatus> = None;
    move |status| {
        for line in render::progress(previous.as_ref(), status) {
            errln!("{line}");
        }
        previous = Some(status.clone());
    }
}

fn report_run(status: &RunStatus, format: Format) -> Outcome {
    match format {
        Format::Json => outln!("{}", run_status_json(status)),
        Format::Text => out!("{}", render::summary(status)),
    }
    match status.state {
        RunState::Succeeded => Outcome::Success,
        _ => Outcome::JobFailed,
    }
}

fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}
