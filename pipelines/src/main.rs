//! The `pipelines` binary: argument parsing, logging and exit codes around the libraries.
//!
//! Exit codes: 0 success; 1 a job failed or the run was rejected; 2 a usage, configuration or
//! connection problem, or output that could not be written (one line on stderr says which);
//! 3 a dispatcher lost the lead to another (`dispatcher::leadership`): its supervisor starts it
//! again, as a standby.

mod commands;
mod output;
mod services;

/// mimalloc rather than the system allocator: change detection on a 10k-unit repository runs
/// about 20% faster with it (BENCHMARKS.md), and the services allocate per message.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use output::errln;
use proto_types::EventKind;

#[derive(Debug, Parser)]
#[command(
    name = "pipelines",
    version,
    about = "Plans and applies exactly the Terraform/OpenTofu/Terragrunt units a change affects, in dependency order.",
    long_about = "Plans and applies exactly the Terraform/OpenTofu/Terragrunt units a change affects, in dependency order.\n\n\
        A CI job runs `pipelines orchestrate` (unprivileged: it only states what changed). An admin-owned \
        `pipelines dispatch` turns each change into jobs, and `pipelines execute` workers, one set per cloud \
        account, run them. `pipelines run` does all three in one process, without RabbitMQ.\n\n\
        Exit codes: 0 success; 1 a job failed or the run was rejected; 2 usage, configuration or connection error, \
        or output that could not be written; 3 `dispatch` lost the lead to another dispatcher (start it again: \
        it stands by). A reader that stops early (`| head`) only cuts the output short."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How log lines look on stderr: text, or JSON lines for log shippers.
    #[arg(long, global = true, env = "PIPELINES_LOG_FORMAT", default_value = "text", value_parser = parse_log_format)]
    log_format: telemetry::LogFormat,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Detect which units changed between two commits and submit them as a run.
    Orchestrate(OrchestrateArgs),
    /// Embedded mode: orchestrate, dispatch and execute in one process over an in-memory broker.
    Run(RunArgs),
    /// Run the dispatcher: validate change events against the policy and schedule jobs.
    Dispatch(DispatchArgs),
    /// Run an executor worker for one account.
    Execute(ExecuteArgs),
    /// List recent runs, or one run's jobs, from the dispatcher's run database.
    Status(StatusArgs),
    /// Cancel a run: jobs not started are cancelled, running ones are stopped.
    Cancel(CancelArgs),
    /// Approve a run's applies and destroys that wait for an approval (`require_approval`).
    Approve(ApprovalArgs),
    /// Reject a run's applies and destroys that wait for an approval: they and their
    /// dependents are cancelled, with the reason.
    Reject(ApprovalArgs),
    /// Internal: run a tool so that its process group dies with the worker (see executor docs).
    #[command(name = "__supervise", hide = true)]
    Supervise {
        /// Run the tool as this user (the worker's `executor.tool_user`).
        #[arg(long, value_name = "UID:GID")]
        as_user: Option<String>,
        worker_pid: u32,
        program: std::ffi::OsString,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Internal: kill every process of a user (the worker's tool user, after each step and
    /// job; see executor docs).
    #[command(name = "__kill-all", hide = true)]
    KillAll {
        /// The user whose processes to kill, as which this runs (`executor.tool_user`).
        #[arg(long, value_name = "UID:GID")]
        as_user: String,
    },
    /// Broker administration.
    #[command(subcommand)]
    Broker(BrokerCommand),
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Policy tools: try the configured Rego policy sets on a plan without a run.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Drift: what the last drift checks found, unit by unit.
    #[command(subcommand)]
    Drift(DriftCommand),
    /// The run database: move it between SQLite and PostgreSQL.
    #[command(subcommand)]
    Store(StoreCommand),
}

#[derive(Debug, Subcommand)]
enum StoreCommand {
    /// Copy every run, job, job output, unpublished message and drift finding from one run
    /// database into another that has no runs yet, in one transaction of the target.
    #[command(
        after_help = "Stop every dispatcher first: the source must not change during the copy.         Then point [dispatcher] store at the target and start the dispatchers again.

        Locations: sqlite://DIR (a dispatcher's state_dir) or sqlite://FILE.sqlite3, and         postgres://USER@HOST:PORT/DATABASE. A PostgreSQL password comes from --password-file,         never from the command line.

Example:
          pipelines store migrate --from sqlite:///var/lib/pipelines \\\n            --to postgres://pipelines@db:5432/pipelines --password-file /run/secrets/pg"
    )]
    Migrate {
        /// The database to copy from.
        #[arg(long, value_name = "URL")]
        from: String,
        /// The database to copy into (created tables, no runs).
        #[arg(long, value_name = "URL")]
        to: String,
        /// The password of the PostgreSQL user of --from and --to (those that name no
        /// password), trailing newline ignored.
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum DriftCommand {
    /// Every unit's last drift finding (in sync; drifted since when, with the plan's counts;
    /// or why it could not be checked), from the dispatcher's run database.
    #[command(
        after_help = "Drift runs start from `pipelines orchestrate --event drift` (a CI cron job) \
        or from a [[drift]] schedule in the dispatcher's configuration.\n\nExample:\n  \
        pipelines drift status --config /etc/pipelines/pipelines.toml --repository infra"
    )]
    Status(DriftStatusArgs),
}

#[derive(Debug, Args)]
struct DriftStatusArgs {
    /// Only this repository's units.
    #[arg(long, value_name = "NAME")]
    repository: Option<String>,
    /// The dispatcher's policy file, for `dispatcher.state_dir`.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The dispatcher's state directory, instead of --config
    /// [default: $XDG_STATE_HOME/pipelines, else ~/.local/state/pipelines].
    #[arg(long, value_name = "DIR", conflicts_with = "config")]
    state_dir: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Evaluate every policy set that governs UNIT of ACCOUNT against a plan's JSON
    /// (`terraform show -json tfplan > plan.json`), as an executor would, and print each set's
    /// verdict. Exit 0 when the plan passes, 1 when it is denied or a set could not run, 2 on a
    /// bad configuration.
    ///
    /// Example:
    ///   pipelines policy test --config pipelines.toml --plan plan.json --unit prod/db --account prod
    Test {
        /// The admin configuration holding [[policies]] and [policy].
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The plan as JSON, from `terraform show -json PLANFILE`.
        #[arg(long, value_name = "FILE")]
        plan: PathBuf,
        /// The unit's repo-relative path, as `input.pipelines.unit`.
        #[arg(long, value_name = "PATH")]
        unit: String,
        /// The account, as `input.pipelines.account`; it selects the sets that apply.
        #[arg(long, value_name = "NAME")]
        account: String,
        /// The job's action, as `input.pipelines.action`.
        #[arg(long, default_value = "plan", value_name = "ACTION")]
        action: String,
        /// The event, as `input.pipelines.event`.
        #[arg(long, default_value = "pull-request", value_name = "pull-request|push")]
        event: String,
        /// The repository, as `input.pipelines.repository` [default: the first configured].
        #[arg(long, value_name = "NAME")]
        repository: Option<String>,
        /// The commit, as `input.pipelines.commit`.
        #[arg(
            long,
            default_value = "0000000000000000000000000000000000000000",
            value_name = "SHA"
        )]
        commit: String,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
}

/// Which commits to compare, shared by `orchestrate` and `run`. Inside GitHub Actions, with
/// neither --head nor --event, they come from the event payload ($GITHUB_EVENT_PATH).
#[derive(Debug, Args)]
struct ChangeArgs {
    /// The git repository to read (its object database; the working tree is ignored).
    #[arg(long, value_name = "DIR", default_value = ".")]
    repo: PathBuf,
    /// The revision to compare against. Pull requests: the base branch or commit (the merge base
    /// with HEAD is used). Pushes: the commit before the push [default: HEAD's first parent].
    #[arg(long, value_name = "REV")]
    base: Option<String>,
    /// The revision to plan or apply [drift: default HEAD].
    #[arg(long, value_name = "REV", requires = "event")]
    head: Option<String>,
    /// pull-request plans the affected units; push (to the deploy branch) applies them; drift
    /// plans every unit of the deploy branch's head, read-only, to find what drifted.
    #[arg(long, value_parser = parse_event)]
    event: Option<EventKind>,
    /// The pull request number, shown in reports.
    #[arg(long, value_name = "N")]
    pr: Option<u64>,
    /// The repository's name in the dispatcher's configuration [default: the directory name].
    #[arg(long, value_name = "NAME")]
    repo_name: Option<String>,
    /// The branch that was pushed [default: from the GitHub event, else the branch HEAD names,
    /// else the checked-out branch].
    #[arg(long, value_name = "BRANCH")]
    branch: Option<String>,
}

#[derive(Debug, Args)]
struct OrchestrateArgs {
    #[command(flatten)]
    change: ChangeArgs,
    /// Print the detected changes instead of submitting them.
    #[arg(long)]
    dry_run: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// The RabbitMQ URL, or a cluster's nodes separated by commas: the first that answers
    /// takes the run.
    #[arg(long, env = "PIPELINES_BROKER_URL", default_value = config::DEFAULT_BROKER_URL, hide_env_values = true, value_delimiter = ',')]
    broker: Vec<String>,
    /// Follow the run until it ends, print each unit's outcome, and exit 0 (all succeeded) or 1.
    #[arg(long)]
    wait: bool,
    /// Give up waiting after this many seconds (exit 2).
    #[arg(long, value_name = "SECONDS", default_value_t = 6 * 3600)]
    wait_timeout: u64,
    /// With --event drift: check only the units matching one of these globs (repeatable)
    /// [default: every unit]. The dispatcher still leaves out its `[[drift]] exclude`.
    #[arg(long = "units", value_name = "GLOB", num_args = 1..)]
    units: Vec<String>,
    /// This CI job's OIDC token (GitHub Actions: `core.getIDToken('pipelines')`), sent with
    /// the event: a dispatcher with `[dispatcher.oidc]` takes a pull request's event only with
    /// a token of that pull request's own workflow run. Give it in the environment, not on the
    /// command line, where other processes can read it.
    #[arg(
        long,
        env = "PIPELINES_ID_TOKEN",
        hide_env_values = true,
        value_name = "JWT"
    )]
    id_token: Option<String>,
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    change: ChangeArgs,
    /// A policy file as `dispatch` takes [default: the local repository, one account owning
    /// every unit, deployable from the pushed branch].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Executor workers per account.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    workers: u16,
    /// Output format of the final summary.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Serve the run's web page here (`127.0.0.1:8480`) while it runs, with its dependency
    /// graph and live logs; after the run the page stays up until Ctrl-C.
    #[arg(long, value_name = "HOST:PORT")]
    web: Option<String>,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Keeps going across broker outages (reconnecting, and answering /readyz with 503 meanwhile). \
    Runs are kept in dispatcher.state_dir: a restarted dispatcher takes them up where it stopped."
)]
struct DispatchArgs {
    /// The admin-owned policy file (TOML; see deploy/pipelines.example.toml).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Serve /metrics, /healthz and /readyz here [default: dispatcher.metrics_address].
    #[arg(long, value_name = "HOST:PORT")]
    metrics_address: Option<String>,
}

#[derive(Debug, Args)]
struct ExecuteArgs {
    /// The admin-owned policy file (TOML; see deploy/pipelines.example.toml).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// The account whose jobs this worker runs.
    #[arg(long, value_name = "NAME")]
    account: String,
    /// `plan`: runs pull requests' plans (their code is untrusted) with the account's
    /// plan_credentials, from `jobs.<ACCOUNT>.plan`. `apply`: runs every job of a push to the
    /// deploy branch (plans, applies, destroys of reviewed commits) with its
    /// apply_credentials, from `jobs.<ACCOUNT>.apply`. Run the two on different machines or
    /// pods, each with only its own credentials and broker login.
    #[arg(long, value_name = "plan|apply")]
    role: proto_types::ExecutorRole,
    /// Where to keep the git mirror and job checkouts; one per worker process
    /// [default: executor.work_dir, else a directory under the system temp dir].
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// The worker's name in job events and its logs' file names: letters, digits and ._@:-,
    /// at most 128 bytes [default: <hostname>-<pid>].
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Serve /metrics, /healthz and /readyz here [default: executor.metrics_address].
    #[arg(long, value_name = "HOST:PORT")]
    metrics_address: Option<String>,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Reads the database read-only; it works while the dispatcher runs, on the same host or volume.\n\n\
    Examples:\n  pipelines status --config /etc/pipelines/pipelines.toml\n  \
    pipelines status 3f2a --config /etc/pipelines/pipelines.toml --format json"
)]
struct StatusArgs {
    /// A run id, or an unambiguous prefix of one: list that run's jobs with state, attempt,
    /// worker, duration and why a job was skipped, cancelled or failed.
    run_id: Option<String>,
    /// The dispatcher's policy file, for `dispatcher.state_dir`.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The dispatcher's state directory, instead of --config
    /// [default: $XDG_STATE_HOME/pipelines, else ~/.local/state/pipelines].
    #[arg(long, value_name = "DIR", conflicts_with = "config")]
    state_dir: Option<PathBuf>,
    /// How many runs to list, newest first.
    #[arg(long, value_name = "N", default_value_t = 20)]
    limit: usize,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Debug, Args)]
#[command(
    after_help = "The dispatcher cancels the jobs that have not started and tells the workers running \
    the others to stop them (terraform is interrupted, then its process group killed after the grace period). \
    The run ends as cancelled.\n\nExample:\n  pipelines cancel 3f2a9c1e --config /etc/pipelines/pipelines.toml --reason 'wrong change'"
)]
struct CancelArgs {
    /// The run id, or an unambiguous prefix of it (looked up in the dispatcher's database).
    run_id: String,
    /// Why, for the record: it shows in the status of every cancelled job.
    #[arg(long, default_value = "no reason given")]
    reason: String,
    /// The policy file, for the broker URL and the dispatcher's database.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Only broker users listed in the dispatcher's `[approvals] users` count: \
    RabbitMQ checks that each message's user_id is the user that logged in, and the dispatcher \
    refuses (and logs) anyone else's order. Log in as yourself with PIPELINES_BROKER_URL \
    (amqp://alice@host/vhost) and PIPELINES_BROKER_PASSWORD_FILE. `pipelines status RUN` shows \
    who approved what, and why.\n\nExamples:\n  \
    pipelines approve 3f2a9c1e --config pipelines.toml --reason 'change window CHG-1234'\n  \
    pipelines reject 3f2a9c1e --unit prod/db --config pipelines.toml --reason 'drops the replica'"
)]
struct ApprovalArgs {
    /// The run id, or an unambiguous prefix of it (looked up in the dispatcher's database).
    run_id: String,
    /// Only this unit's job; without it, every job of the run that waits for an approval.
    #[arg(long, value_name = "PATH")]
    unit: Option<String>,
    /// Why, for the record: it shows in the status and the pull request comment.
    #[arg(long)]
    reason: String,
    /// The configuration, for the broker URL, the approvers and the dispatcher's database.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
}

#[derive(Debug, Subcommand)]
enum BrokerCommand {
    /// Declare every exchange and queue the configuration needs (idempotent).
    Setup {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Print RabbitMQ definitions for a least-privilege deployment: vhost, exchanges, queues,
    /// policies and one user per component with the narrowest permissions. Load them with
    /// `rabbitmqctl import_definitions FILE`.
    #[command(
        after_help = "Passwords come from PIPELINES_RABBITMQ_PASSWORD_<ROLE> (ADMIN, DISPATCHER, \
        ORCHESTRATOR, ORCHESTRATOR_DEPLOY, EXECUTOR_<ACCOUNT>_<ROLE>); a missing one is generated and printed once on stderr. \
        The file holds password hashes only.\n\nExample:\n  pipelines broker definitions --config pipelines.toml > definitions.json\n  \
        rabbitmqctl import_definitions definitions.json"
    )]
    Definitions {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The virtual host.
        #[arg(long, default_value = "pipelines")]
        vhost: String,
        /// Put before every user name: `<prefix>dispatcher`, `<prefix>executor-<account>-<role>`.
        #[arg(long, default_value = "pipelines-")]
        user_prefix: String,
        /// Add a consumer-timeout policy (RabbitMQ 3.12 and later; older versions take
        /// `consumer_timeout` in rabbitmq.conf instead). Set it above your longest job timeout.
        #[arg(long, value_name = "MINUTES")]
        consumer_timeout_minutes: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate a policy file and print a summary; exit 2 naming the first bad key. With
    /// --account and --role, also make some of the checks that worker makes when it starts,
    /// without changing anything: a plan worker must not be able to read the apply identity's
    /// token file; the tool user must not be able to read the broker password file; what
    /// every job's tools read (PATH, tf_binary, plugin cache, mirrors, CLI configuration)
    /// must not be writable by every user, nor, on a plan worker, by its tool user. Run it
    /// where and as the worker runs: its environment (PATH, pass_env, PIPELINES_*) decides
    /// what is checked. Not checked here: the worker's privileges, and the work and log
    /// directories (checked when the worker creates them).
    Check {
        file: PathBuf,
        /// The account of the worker to check on this machine.
        #[arg(long, value_name = "NAME", requires = "role")]
        account: Option<String>,
        /// The role of the worker to check on this machine.
        #[arg(long, value_name = "plan|apply", requires = "account")]
        role: Option<proto_types::ExecutorRole>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Text,
    Json,
}

fn parse_event(value: &str) -> Result<EventKind, String> {
    value.parse()
}

fn parse_log_format(value: &str) -> Result<telemetry::LogFormat, String> {
    value.parse()
}

/// The OpenTelemetry service name of a subcommand.
fn service_name(command: &Command) -> &'static str {
    match command {
        Command::Orchestrate(_) => "pipelines-orchestrate",
        Command::Run(_) => "pipelines-run",
        Command::Dispatch(_) => "pipelines-dispatch",
        Command::Execute(_) => "pipelines-execute",
        _ => "pipelines",
    }
}

/// Keeps a long-running service's memory in 4 KiB pages. mimalloc asks for transparent huge
/// pages on its arenas, and with them every 2 MiB region it has touched stays resident whole:
/// the dispatcher's peak with 20 pages following a 1,000-job run was 93–114 MiB with them and
/// 46.7–48.4 MiB without, the idle executor 33 MiB against 18 (BENCHMARKS.md, "Memory"). Best
/// effort: a kernel without the flag keeps its huge pages. The flag is inherited: the
/// supervisor turns huge pages back on for the tools (the host's policy then applies to them,
/// even where the worker itself was started with them off); git and credential commands keep
/// them off.
fn without_huge_pages() {
    let _ = rustix::thread::disable_transparent_huge_pages(true);
}

/// How a command ended, for the exit code.
#[derive(Debug)]
enum Outcome {
    Success,
    JobFailed,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Supervise {
        as_user,
        worker_pid,
        program,
        args,
    } = cli.command
    {
        // No logging, no runtime of ours: the tool's output is the only output.
        let code =
            executor_worker::supervisor::supervise(worker_pid, as_user.as_deref(), program, args);
        return ExitCode::from(u8::try_from(code).unwrap_or(125));
    }
    if let Command::KillAll { as_user } = &cli.command {
        let code = executor_worker::supervisor::kill_all_of_user(as_user);
        return ExitCode::from(u8::try_from(code).unwrap_or(125));
    }
    if matches!(cli.command, Command::Dispatch(_) | Command::Execute(_)) {
        without_huge_pages();
    }
    // Services log at info; interactive commands only warn, because their progress lines
    // already say what is happening. RUST_LOG overrides both.
    let quiet = matches!(
        cli.command,
        Command::Orchestrate(_)
            | Command::Run(_)
            | Command::Config(_)
            | Command::Policy(_)
            | Command::Status(_)
            | Command::Cancel(_)
            | Command::Approve(_)
            | Command::Reject(_)
    );
    // A multi-threaded runtime for the services too. A single-threaded one saved ~10% of CPU
    // per no-op job, but a dispatcher on it once missed its connections' loss during a broker
    // restart and never reconnected (tests/endpoints.rs caught it, 1 run in 3).
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            errln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(2);
        }
    };
    let service = service_name(&cli.command);
    let result = runtime.block_on(async {
        let telemetry =
            match telemetry::init(service, cli.log_format, if quiet { "warn" } else { "info" }) {
                Ok(telemetry) => telemetry,
                Err(err) => return Err(anyhow::Error::from(err)),
            };
        let result = match cli.command {
            Command::Orchestrate(args) => commands::orchestrate(args).await,
            Command::Run(args) => commands::run(args).await,
            Command::Dispatch(args) => services::dispatch(args).await,
            Command::Execute(args) => services::execute(args).await,
            Command::Status(args) => commands::status(args),
            Command::Cancel(args) => commands::cancel(args).await,
            Command::Approve(args) => {
                commands::approve(args, proto_types::ApprovalVerdict::Approve).await
            }
            Command::Reject(args) => {
                commands::approve(args, proto_types::ApprovalVerdict::Reject).await
            }
            Command::Supervise { .. } | Command::KillAll { .. } => {
                unreachable!("handled before the runtime starts")
            }
            Command::Drift(DriftCommand::Status(args)) => commands::drift_status(args),
            Command::Store(StoreCommand::Migrate {
                from,
                to,
                password_file,
            }) => commands::store_migrate(&from, &to, password_file.as_deref()),
            Command::Broker(BrokerCommand::Setup { config }) => {
                commands::broker_setup(&config).await
            }
            Command::Broker(BrokerCommand::Definitions {
                config,
                vhost,
                user_prefix,
                consumer_timeout_minutes,
            }) => commands::broker_definitions(
                &config,
                &vhost,
                &user_prefix,
                consumer_timeout_minutes,
            ),
            Command::Config(ConfigCommand::Check {
                file,
                account,
                role,
            }) => commands::config_check(&file, account.zip(role)),
            Command::Policy(PolicyCommand::Test {
                config,
                plan,
                unit,
                account,
                action,
                event,
                repository,
                commit,
                format,
            }) => commands::policy_test(
                &config,
                &plan,
                executor_worker::policy::PlanContext {
                    repository: repository.unwrap_or_default(),
                    event,
                    unit,
                    account,
                    action,
                    commit,
                },
                format == Format::Json,
            ),
        };
        // Spans still buffered are exported before the runtime stops.
        telemetry.shutdown();
        result
    });
    match (result, output::failure()) {
        (Err(err), _) => {
            errln!("error: {err:#}");
            ExitCode::from(2)
        }
        // The command did its work but what it printed was lost.
        (Ok(Outcome::Success), Some(failure)) => {
            errln!("error: {failure}");
            ExitCode::from(2)
        }
        (Ok(Outcome::Success), None) => ExitCode::SUCCESS,
        (Ok(Outcome::JobFailed), failure) => {
            if let Some(failure) = failure {
                errln!("error: {failure}");
            }
            ExitCode::from(1)
        }
    }
}
