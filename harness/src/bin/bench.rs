//! Pipeline benchmarks, each printed next to its floor or bound measured in the same run:
//! the broker floor, no-op job throughput and event-to-job-start latency through the real
//! dispatcher and executor processes, memory, DAG execution with real terraform, a drift run
//! over 200 units with real terraform, policy evaluation of a 1,000-resource plan, and the
//! web page's live logs (line-to-page latency, a 50 MB log, 20 pages following a big run), and
//! the run database's engines (throughput and latency on SQLite and on PostgreSQL, and the
//! failover time of two dispatchers on PostgreSQL, next to the lease), and the executor's
//! summary of a 300 MB `show -json` plan (its time next to reading the bytes, its peak memory).
//!
//! `cargo run --release -p harness --bin bench -- [all|floor|throughput|latency|memory|dag|drift|policy|logs|pages|stores|summary]`
//! (`pages` is the last part of `logs` alone: 20 pages following a 1,000-job run.)
//! Writes the figures as JSON to `target/bench/results.json` (or `--out FILE`) for
//! `scripts/plot_benchmarks.py`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // A program that reports.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use broker::{Broker, Headers, Outgoing, Route, Topology};
use dispatcher::store::Store;
use harness::deployment::Deployment;
use harness::rabbit::{self, Vhost};
use harness::sandbox::{Engine, Sandbox};
use harness::scenario::{self, Fixture};
use proto_types::{
    Change, ChangeEvent, ChangeKind, DependencyEdge, ExecutorRole, RunDetail, Trigger,
};
use serde_json::{Value, json};
use uuid::Uuid;

/// The allocator the `pipelines` binary uses, so that what runs in this process (the policy
/// evaluation and its floor) allocates as it would in an executor.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "usage: bench [all|floor|throughput|latency|memory|dag|drift|policy|logs|pages|stores|summary]... [--quick] [--workers 1,2,4] [--out FILE]";

fn main() {
    if let [_, hidden, what] = &std::env::args().collect::<Vec<_>>()[..]
        && hidden == SUMMARY_CHILD
    {
        match what.strip_prefix(ONE_RESOURCE) {
            Some(megabytes) => one_resource_child(megabytes.parse().expect(USAGE)),
            None => summary_child(what.parse().expect(USAGE)),
        }
        return;
    }
    let mut which = Vec::new();
    let mut quick = false;
    let mut workers: Option<Vec<usize>> = None;
    let mut out = harness::workspace_root().join("target/bench/results.json");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--out" => out = PathBuf::from(args.next().expect(USAGE)),
            "--workers" => {
                let list = args.next().expect(USAGE);
                workers = Some(list.split(',').map(|n| n.parse().expect(USAGE)).collect());
            }
            "all" | "floor" | "throughput" | "latency" | "memory" | "dag" | "drift" | "policy"
            | "logs" | "pages" | "stores" | "summary" => which.push(arg),
            "-h" | "--help" => {
                println!(
                    "{USAGE}\n\n{}",
                    include_str!("bench.rs")
                        .lines()
                        .take(7)
                        .collect::<Vec<_>>()
                        .join("\n")
                );
                return;
            }
            other => {
                eprintln!("unknown argument {other:?}\n{USAGE}");
                std::process::exit(2);
            }
        }
    }
    if which.is_empty() || which.iter().any(|w| w == "all") {
        which = [
            "floor",
            "throughput",
            "latency",
            "memory",
            "dag",
            "drift",
            "policy",
            "logs",
            "stores",
            "summary",
        ]
        .map(String::from)
        .to_vec();
    }
    let mut size = if quick { Size::quick() } else { Size::full() };
    if let Some(workers) = workers {
        size.workers = workers;
    }
    println!(
        "Machine: {} cores, {}; RabbitMQ at 127.0.0.1:5672; {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        memory_total(),
        if quick { "quick sizes" } else { "full sizes" }
    );
    let mut results = serde_json::Map::new();
    for name in &which {
        let result = match name.as_str() {
            "floor" => floor(&size),
            "throughput" => throughput(&size),
            "latency" => latency(&size),
            "memory" => memory(&size),
            "dag" => dag(),
            "drift" => drift(if quick { 40 } else { 200 }),
            "policy" => policy(&size),
            "logs" => logs(quick),
            "pages" => pages(quick),
            "stores" => stores(&size),
            "summary" => summary(quick),
            _ => unreachable!(),
        };
        results.insert(name.clone(), result);
    }
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    std::fs::write(
        &out,
        serde_json::to_string_pretty(&Value::Object(results)).unwrap(),
    )
    .unwrap();
    println!("\nResults written to {}", out.display());
}

struct Size {
    floor_messages: usize,
    throughput_jobs: usize,
    workers: Vec<usize>,
    latency_events: usize,
    queued_jobs: usize,
    /// Evaluations of the policy benchmark (the median is reported).
    policy_rounds: usize,
    /// The leader leases the failover benchmark tries, and its kills per lease.
    failover_leases: Vec<u64>,
    failover_rounds: usize,
}

impl Size {
    fn full() -> Size {
        Size {
            floor_messages: 20_000,
            throughput_jobs: 5_000,
            workers: vec![1, 2, 4, 8],
            latency_events: 500,
            queued_jobs: 10_000,
            policy_rounds: 21,
            failover_leases: vec![3, 10],
            failover_rounds: 3,
        }
    }

    fn quick() -> Size {
        Size {
            floor_messages: 2_000,
            throughput_jobs: 500,
            workers: vec![1, 4],
            latency_events: 50,
            queued_jobs: 1_000,
            policy_rounds: 5,
            failover_leases: vec![3],
            failover_rounds: 1,
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// Raw RabbitMQ: persistent messages published with confirms into a quorum queue like the job
/// queues, consumed and acked, through the same broker port the components use.
fn floor(size: &Size) -> Value {
    println!("\n== Broker floor: confirmed persistent publish -> consume -> ack ==");
    let vhost = rabbit::vhost();
    let runtime = runtime();
    let rate = runtime.block_on(broker_floor(&vhost, size.floor_messages));
    println!(
        "{} messages: {rate:.0} msg/s (publish concurrency 64, prefetch 256, quorum queue)",
        size.floor_messages
    );
    json!({ "messages": size.floor_messages, "msgs_per_sec": rate })
}

async fn broker_floor(vhost: &Vhost, messages: usize) -> f64 {
    let publisher = Broker::connect(&vhost.url, "bench-floor-publish")
        .await
        .unwrap();
    publisher
        .declare_topology(&Topology::new(["floor".to_owned()]))
        .await
        .unwrap();
    let consumer_broker = Broker::connect(&vhost.url, "bench-floor-consume")
        .await
        .unwrap();
    let queue = broker::topology::jobs_queue("floor", ExecutorRole::Apply);
    let mut consumer = consumer_broker.consume(&queue, 256).await.unwrap();
    let body = vec![7u8; 300]; // about a job message's size
    let start = Instant::now();
    let consuming = tokio::spawn(async move {
        for _ in 0..messages {
            let delivery = consumer.next().await.unwrap().unwrap();
            delivery.ack().await.unwrap();
        }
    });
    let body = Arc::new(body);
    let mut tasks = tokio::task::JoinSet::new();
    let per_task = messages / 64;
    for task in 0..64 {
        let publisher = publisher.clone();
        let body = body.clone();
        let count = if task == 63 {
            messages - per_task * 63
        } else {
            per_task
        };
        tasks.spawn(async move {
            let headers = Headers::new();
            for i in 0..count {
                let id = format!("{task}-{i}");
                publisher
                    .publish(
                        Route::Jobs {
                            account: "floor",
                            role: ExecutorRole::Apply,
                        },
                        Outgoing::new(&body, &id, &headers),
                    )
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    consuming.await.unwrap();
    messages as f64 / start.elapsed().as_secs_f64()
}

/// A deployment whose changes run no-op jobs: the real dispatcher and executor processes, the
/// real claim, events and run state; no checkout and no tool.
struct NoopWorld {
    vhost: Vhost,
    sandbox: Sandbox,
    deployment: Deployment,
    runtime: tokio::runtime::Runtime,
    broker: Broker,
}

impl NoopWorld {
    fn start(workers: usize) -> NoopWorld {
        NoopWorld::start_with(workers, "")
    }

    /// Like [`NoopWorld::start`], with `dispatcher` settings added to `[dispatcher]`.
    fn start_with(workers: usize, dispatcher: &str) -> NoopWorld {
        NoopWorld::start_on(Engine::Sqlite, workers, dispatcher)
    }

    /// Like [`NoopWorld::start_with`], the runs kept in `engine`.
    fn start_on(engine: Engine, workers: usize, dispatcher: &str) -> NoopWorld {
        let vhost = rabbit::vhost();
        let sandbox = Sandbox::with_engine(engine);
        let config = sandbox.write_config(
            &vhost.url,
            &[("dev", "dev/**")],
            &format!("{dispatcher}\n[triggers]\nunit_added = \"noop\"\nunit_changed = \"noop\"\n"),
        );
        let deployment = Deployment::start(sandbox.path(), &config, &[("dev", workers)]);
        let runtime = runtime();
        let broker = runtime
            .block_on(Broker::connect(&vhost.url, "bench-orchestrator"))
            .unwrap();
        let world = NoopWorld {
            vhost,
            sandbox,
            deployment,
            runtime,
            broker,
        };
        // The benchmark's runs are pull requests: their jobs go to the plan workers.
        for i in 1..=workers {
            world.wait_log(&format!("dev-plan-{i}"), "Executor ready.");
        }
        world.wait_dispatcher_ready();
        world
    }

    fn wait_dispatcher_ready(&self) {
        harness::poll_until(Duration::from_secs(60), "the dispatcher to start", || {
            self.deployment
                .dispatcher_log()
                .contains("Dispatcher ready.")
                .then_some(())
        });
    }

    fn wait_log(&self, executor: &str, line: &str) {
        harness::poll_until(Duration::from_secs(60), line, || {
            self.deployment
                .executor_log(executor)
                .contains(line)
                .then_some(())
        });
    }

    /// Publishes a pull-request change event over `units` (no dependencies); its run id.
    /// Each event is its own pull request: a newer run of one pull request would cancel what
    /// the older had not started, and these benchmarks measure runs, not supersession.
    fn submit(&self, units: Vec<String>, edges: Vec<DependencyEdge>) -> Uuid {
        static NEXT_PR: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let number = NEXT_PR.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = Uuid::new_v4();
        let event = ChangeEvent {
            id,
            repository: "infra".into(),
            trigger: Trigger::PullRequest {
                number: Some(number),
                base_branch: "main".into(),
                head_branch: "bench".into(),
            },
            base_sha: "a".repeat(40),
            head_sha: "b".repeat(40),
            changes: vec![Change {
                kind: ChangeKind::UnitChanged,
                units,
                files: vec![],
            }],
            dependencies: edges,
        };
        let body = proto_types::encode(&event);
        let headers = Headers::new();
        let message_id = id.to_string();
        self.runtime
            .block_on(
                self.broker
                    .publish(Route::Changes, Outgoing::new(&body, &message_id, &headers)),
            )
            .unwrap();
        id
    }

    fn store(&self) -> Option<Store> {
        Store::connect_read_only(&self.sandbox.store_location()).ok()
    }

    /// Polls the dispatcher's database until `run` is final.
    /// Polls the run's summary only (the detail of a 5,000-job run costs the benchmark's
    /// own process enough CPU to slow the pipeline it measures), then reads the detail once.
    fn wait_final(&self, run: Uuid, deadline: Duration) -> RunDetail {
        let store = harness::poll_until(deadline, "the run database", || self.store());
        harness::poll_until(deadline, &format!("run {run} to finish"), || {
            let phase = store.run_phase(run).ok()??;
            phase.is_final().then_some(())
        });
        store.run_detail(&run.to_string(), now_ms()).unwrap()
    }

    /// Submits one run of `units` (no dependencies) and waits for it to succeed: seconds from
    /// the publish to the last job's end.
    fn run_noop_jobs(&self, units: Vec<String>) -> f64 {
        let published = now_ms();
        let run = self.submit(units, vec![]);
        let detail = self.wait_final(run, Duration::from_secs(600));
        assert_eq!(detail.run.state, "succeeded", "{:?}", detail.run);
        let last = detail
            .jobs
            .iter()
            .filter_map(|j| j.finished_ms)
            .max()
            .unwrap();
        (last - published) as f64 / 1000.0
    }

    fn dispatcher_rss(&self) -> (u64, u64) {
        rss(self.deployment.dispatcher_pid())
    }

    /// CPU seconds used so far by the dispatcher, and by all executors together.
    fn cpu_seconds(&self, workers: usize) -> (f64, f64) {
        let executors = (1..=workers)
            .map(|i| cpu_seconds(self.deployment.executor_pid(&format!("dev-plan-{i}"))))
            .sum();
        (cpu_seconds(self.deployment.dispatcher_pid()), executors)
    }
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command name may hold spaces: fields count from after its closing parenthesis.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

/// CPU seconds of RabbitMQ's Erlang VM (beam.smp), if it runs on this machine.
fn broker_cpu_seconds() -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == "beam.smp")
        })
        .map(cpu_seconds)
        .sum()
}

/// No-op jobs per second through the whole pipeline, for each number of workers.
fn throughput(size: &Size) -> Value {
    println!("\n== Pipeline throughput: no-op jobs through dispatcher and executors ==");
    let jobs = size.throughput_jobs;
    let mut rows = Vec::new();
    let floor_vhost = rabbit::vhost();
    let floor_rate = runtime().block_on(broker_floor(
        &floor_vhost,
        10_000.min(size.floor_messages * 2),
    ));
    drop(floor_vhost);
    // Each job is at least four confirmed broker messages: the job, the claim, its answer and the
    // finished event. That bounds what any design on this broker can do.
    let bound = floor_rate / 4.0;
    println!(
        "broker floor {floor_rate:.0} msg/s; a job needs >= 4 messages, so at most {bound:.0} jobs/s here"
    );
    println!(
        "{:>8} {:>8} {:>10} {:>10}   CPU seconds: {:>10} {:>10} {:>10}   {:>11} {:>8}",
        "workers",
        "jobs",
        "seconds",
        "jobs/s",
        "dispatcher",
        "executors",
        "rabbitmq",
        "CPU ms/job",
        "ceiling"
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for &workers in &size.workers {
        let world = NoopWorld::start(workers);
        let units: Vec<String> = (0..jobs).map(|i| format!("dev/u{i:05}")).collect();
        let (dispatcher_before, executors_before) = world.cpu_seconds(workers);
        let broker_before = broker_cpu_seconds();
        let seconds = world.run_noop_jobs(units);
        let (dispatcher_after, executors_after) = world.cpu_seconds(workers);
        let broker_cpu = broker_cpu_seconds() - broker_before;
        let rate = jobs as f64 / seconds;
        let dispatcher_cpu = dispatcher_after - dispatcher_before;
        let executors_cpu = executors_after - executors_before;
        // What the machine could do at this CPU cost per job, with every core busy.
        let cpu_total = dispatcher_cpu + executors_cpu + broker_cpu;
        let ceiling = cores as f64 * jobs as f64 / cpu_total;
        let cpu_ms_per_job = cpu_total * 1000.0 / jobs as f64;
        println!(
            "{workers:>8} {jobs:>8} {seconds:>10.2} {rate:>10.0}                {dispatcher_cpu:>10.2} {executors_cpu:>10.2} {broker_cpu:>10.2}   {cpu_ms_per_job:>11.2} {ceiling:>8.0}"
        );
        rows.push(json!({
            "workers": workers, "jobs": jobs, "seconds": seconds, "jobs_per_sec": rate,
            "cpu_ceiling_jobs_per_sec": ceiling, "cpu_ms_per_job": cpu_ms_per_job,
            "cpu_seconds": { "dispatcher": dispatcher_cpu, "executors": executors_cpu, "rabbitmq": broker_cpu },
        }));
        drop(world);
    }
    println!(
        "CPU ms/job: dispatcher, executors and RabbitMQ together; ceiling: jobs/s this machine's {cores} cores could do at that cost; target: >= 1,000 jobs/s with 4 workers"
    );
    json!({ "floor_msgs_per_sec": floor_rate, "bound_jobs_per_sec": bound, "cores": cores, "runs": rows })
}

/// How often the latency benchmarks publish a one-unit run.
const LATENCY_INTERVAL: Duration = Duration::from_millis(20);

/// Publishes `count` one-unit runs, one every [`LATENCY_INTERVAL`]; each one's time from the
/// publish to the dispatcher granting a worker its job, with when it was published, slowest
/// last.
fn start_latencies(world: &NoopWorld, count: usize) -> Vec<LatencyEvent> {
    let mut sent = Vec::new();
    let mut next = Instant::now();
    for i in 0..count {
        while Instant::now() < next {
            std::thread::yield_now();
        }
        next += LATENCY_INTERVAL;
        let at = now_ms();
        sent.push((world.submit(vec![format!("dev/l{i:05}")], vec![]), at));
    }
    let first = sent.first().map_or(0, |(_, at)| *at);
    let mut latencies: Vec<LatencyEvent> = sent
        .iter()
        .enumerate()
        .map(|(index, (run, at))| {
            let detail = world.wait_final(*run, Duration::from_secs(120));
            LatencyEvent {
                ms: detail.jobs[0].started_ms.unwrap() - at,
                index,
                published_ms: at - first,
            }
        })
        .collect();
    latencies.sort_by_key(|event| event.ms);
    latencies
}

/// One latency event: how long its job took to start, and when it was published, so that
/// a spike can be matched to what the machine did then.
#[derive(Debug, Clone, Copy)]
struct LatencyEvent {
    ms: u64,
    index: usize,
    published_ms: u64,
}

/// How many of the slowest latency events the report names, with when they were published.
const SLOWEST_SHOWN: usize = 5;

/// Event-to-job-start latency with 4 workers: one-unit runs published at a steady rate, each
/// timed from the publish to the dispatcher granting a worker the job.
fn latency(size: &Size) -> Value {
    println!("\n== Event-to-job-start latency, 4 workers ==");
    let world = NoopWorld::start(4);
    let floor = world.runtime.block_on(publish_roundtrip(&world.vhost, 200));
    let interval = LATENCY_INTERVAL;
    let events = start_latencies(&world, size.latency_events);
    let latencies: Vec<u64> = events.iter().map(|event| event.ms).collect();
    let pick = |p: f64| {
        latencies[((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1]
    };
    let (p50, p90, p99, max) = (
        pick(0.50),
        pick(0.90),
        pick(0.99),
        *latencies.last().unwrap(),
    );
    let slowest: Vec<LatencyEvent> = events.iter().rev().take(SLOWEST_SHOWN).copied().collect();
    println!(
        "{} runs at {}/s: p50 {p50} ms, p90 {p90} ms, p99 {p99} ms, max {max} ms (target p99 < 50 ms)",
        latencies.len(),
        1000 / interval.as_millis()
    );
    println!(
        "floor: one confirmed publish + consume round trip on this broker: p50 {:.1} ms, p99 {:.1} ms; a job start takes 3 such hops",
        floor.0, floor.1
    );
    let shown: Vec<String> = slowest
        .iter()
        .map(|e| format!("#{} at +{} ms: {} ms", e.index, e.published_ms, e.ms))
        .collect();
    println!("slowest: {}", shown.join("; "));
    json!({
        "runs": latencies.len(),
        "rate_per_sec": 1000 / interval.as_millis(),
        "p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "max_ms": max,
        "floor_hop_p50_ms": floor.0, "floor_hop_p99_ms": floor.1,
        "slowest": slowest.iter().map(|e| json!({
            "index": e.index, "published_ms": e.published_ms, "ms": e.ms,
        })).collect::<Vec<_>>(),
    })
}

/// p50 and p99 of publish-with-confirm until the consumer has the message, one at a time.
async fn publish_roundtrip(vhost: &Vhost, count: usize) -> (f64, f64) {
    let broker = Broker::connect(&vhost.url, "bench-hop").await.unwrap();
    broker
        .declare_topology(&Topology::new(["hop".to_owned()]))
        .await
        .unwrap();
    let queue = broker::topology::jobs_queue("hop", ExecutorRole::Apply);
    let mut consumer = broker.consume(&queue, 1).await.unwrap();
    let headers = Headers::new();
    let mut times = Vec::new();
    for i in 0..count {
        let start = Instant::now();
        let id = i.to_string();
        broker
            .publish(
                Route::Jobs {
                    account: "hop",
                    role: ExecutorRole::Apply,
                },
                Outgoing::new(b"x", &id, &headers),
            )
            .await
            .unwrap();
        let delivery = consumer.next().await.unwrap().unwrap();
        times.push(start.elapsed().as_secs_f64() * 1000.0);
        delivery.ack().await.unwrap();
    }
    times.sort_by(f64::total_cmp);
    (times[count / 2], times[count * 99 / 100])
}

/// Dispatcher RSS with many queued jobs and no worker to take them; an idle executor's RSS.
fn memory(size: &Size) -> Value {
    println!("\n== Memory ==");
    let jobs = size.queued_jobs;
    // One run of all of them: more units than the default dispatcher.max_units_per_run.
    let world = NoopWorld::start_with(1, &format!("max_units_per_run = {jobs}\n"));
    // The benchmark's runs are pull requests: the plan worker is the one that would take them.
    let (idle_rss, _) = rss(world.deployment.executor_pid("dev-plan-1"));
    let (dispatcher_idle, _) = world.dispatcher_rss();
    let mut world = world;
    world.deployment.kill_executor("dev-plan-1");
    let units: Vec<String> = (0..jobs).map(|i| format!("dev/m{i:05}")).collect();
    let run = world.submit(units, vec![]);
    harness::poll_until(Duration::from_secs(300), "every job queued", || {
        let store = world.store()?;
        let detail = store.run_detail(&run.to_string(), now_ms()).ok()?;
        assert_ne!(detail.run.state, "rejected", "{:?}", detail.run.reason);
        (detail.jobs.len() == jobs && detail.jobs.iter().all(|j| j.state == "queued")).then_some(())
    });
    let (queued_rss, peak) = world.dispatcher_rss();
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "dispatcher: {:.1} MiB idle, {:.1} MiB with {jobs} jobs queued (peak {:.1} MiB); target < 100 MiB",
        mib(dispatcher_idle),
        mib(queued_rss),
        mib(peak)
    );
    println!("idle executor: {:.1} MiB; target < 30 MiB", mib(idle_rss));
    json!({
        "queued_jobs": jobs,
        "dispatcher_idle_mib": mib(dispatcher_idle),
        "dispatcher_queued_mib": mib(queued_rss),
        "dispatcher_peak_mib": mib(peak),
        "executor_idle_mib": mib(idle_rss),
    })
}

/// (VmRSS, VmHWM) of a process, in KiB.
fn rss(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The argument that makes this program the summary benchmark's child.
const SUMMARY_CHILD: &str = "__plan-summary";

/// The executor's summary of `show -json` over a plan generated as it is read (one resource
/// in 1,000 changes, each with 1 KB of values), in a process of its own, so that its peak
/// memory is the summary's. The floor is `serde_json` reading the same plan, every value
/// skipped.
fn summary(quick: bool) -> Value {
    let resources: usize = if quick { 25_000 } else { 250_000 };
    println!("\n== Plan summary: show -json of a {resources}-resource plan, read as it streams ==");
    let mut measured = summary_in_child(&resources.to_string());
    let number = |key: &str| measured[key].as_f64().unwrap();
    println!(
        "{:.0} MB of plan JSON: summary {:.0} ms, floor (serde_json reading it, every value skipped) \
         {:.0} ms: {:.1}x the floor; peak RSS {:.1} MiB, {:.1} MiB before the summary",
        number("plan_mb"),
        number("summary_ms"),
        number("floor_ms"),
        number("summary_ms") / number("floor_ms"),
        number("peak_mib"),
        number("before_mib"),
    );
    // What a pull request's plan can print: one resource whose values are a long list of
    // small objects (a parsed tree of them is several times their size).
    let megabytes = if quick { 10 } else { 100 };
    let one = summary_in_child(&format!("{ONE_RESOURCE}{megabytes}"));
    let number = |key: &str| one[key].as_f64().unwrap();
    println!(
        "one resource with {:.0} MB of planned values: summary {:.0} ms; peak RSS {:.1} MiB, \
         {:.1} MiB before the summary",
        number("plan_mb"),
        number("summary_ms"),
        number("peak_mib"),
        number("before_mib"),
    );
    measured["one_resource"] = one;
    measured
}

/// What [`SUMMARY_CHILD`] `what` measured, in a process of its own (its peak RSS is the
/// summary's).
fn summary_in_child(what: &str) -> Value {
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([SUMMARY_CHILD, what])
        .output()
        .unwrap();
    assert!(
        child.status.success(),
        "{}",
        String::from_utf8_lossy(&child.stderr)
    );
    serde_json::from_slice(&child.stdout).unwrap()
}

/// The argument of [`SUMMARY_CHILD`] that reads [`OneResourcePlan`] of so many MB.
const ONE_RESOURCE: &str = "one-resource:";

fn one_resource_child(megabytes: usize) {
    use executor_worker::plan_summary::plan_summary_from;
    let bytes = megabytes * 1_000_000;
    let (_, before) = rss(std::process::id());
    let start = Instant::now();
    let summary = plan_summary_from(OneResourcePlan::new(bytes)).unwrap();
    let elapsed = start.elapsed();
    let (_, peak) = rss(std::process::id());
    assert_eq!(summary.changed, 1, "{summary:?}");
    println!(
        "{}",
        json!({
            "plan_mb": megabytes,
            "summary_ms": elapsed.as_secs_f64() * 1e3,
            "before_mib": before as f64 / 1024.0,
            "peak_mib": peak as f64 / 1024.0,
        })
    );
}

/// Copies into `buf` what is left of `pending` from `at`, as much as fits; how much.
fn serve(pending: &[u8], at: &mut usize, buf: &mut [u8]) -> usize {
    let n = buf.len().min(pending.len() - *at);
    buf[..n].copy_from_slice(&pending[*at..*at + n]);
    *at += n;
    n
}

/// `show -json` of a plan whose one changed resource has about `bytes` of planned values,
/// made as it is read.
struct OneResourcePlan {
    left: usize,
    pending: Vec<u8>,
    at: usize,
    ended: bool,
}

impl OneResourcePlan {
    const ITEM: &[u8] = br#",{"k":[1,"s",{}]}"#;

    fn new(bytes: usize) -> OneResourcePlan {
        OneResourcePlan {
            left: bytes,
            pending: br#"{"format_version":"1.2","resource_changes":[{"address":"null_resource.big","mode":"managed","change":{"actions":["update"],"after":[{}"#.to_vec(),
            at: 0,
            ended: false,
        }
    }
}

impl std::io::Read for OneResourcePlan {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.at == self.pending.len() {
            if self.ended {
                return Ok(0);
            }
            self.at = 0;
            if self.left == 0 {
                self.pending = br#"],"after_unknown":{}}}]}"#.to_vec();
                self.ended = true;
            } else {
                self.pending = Self::ITEM.repeat(4096);
                self.left = self.left.saturating_sub(self.pending.len());
            }
        }
        Ok(serve(&self.pending, &mut self.at, buf))
    }
}

fn summary_child(resources: usize) {
    use executor_worker::plan_summary::plan_summary_from;
    let bytes = std::io::copy(&mut GeneratedPlan::new(resources), &mut std::io::sink()).unwrap();
    // The floor: the cheapest full read of the same JSON, every value skipped.
    let start = Instant::now();
    let plan = std::io::BufReader::new(GeneratedPlan::new(resources));
    serde_json::from_reader::<_, serde::de::IgnoredAny>(plan).unwrap();
    let floor = start.elapsed();
    let (_, before) = rss(std::process::id());
    let start = Instant::now();
    // As the worker reads a tool's pipe: the summary buffers what it reads itself.
    let summary = plan_summary_from(GeneratedPlan::new(resources)).unwrap();
    let elapsed = start.elapsed();
    let (_, peak) = rss(std::process::id());
    assert_eq!(summary.changed, resources / 1000, "{summary:?}");
    println!(
        "{}",
        json!({
            "resources": resources,
            "plan_mb": bytes as f64 / 1e6,
            "summary_ms": elapsed.as_secs_f64() * 1e3,
            "floor_ms": floor.as_secs_f64() * 1e3,
            "before_mib": before as f64 / 1024.0,
            "peak_mib": peak as f64 / 1024.0,
        })
    );
}

/// `show -json` of a plan with `resources` resources, made as it is read.
struct GeneratedPlan {
    resources: usize,
    next: usize,
    pending: Vec<u8>,
    at: usize,
}

impl GeneratedPlan {
    fn new(resources: usize) -> GeneratedPlan {
        GeneratedPlan {
            resources,
            next: 0,
            pending: br#"{"format_version":"1.2","resource_changes":["#.to_vec(),
            at: 0,
        }
    }
}

impl std::io::Read for GeneratedPlan {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.at == self.pending.len() {
            self.pending.clear();
            self.at = 0;
            if self.next > self.resources {
                return Ok(0);
            }
            if self.next == self.resources {
                self.pending.extend_from_slice(b"]}");
            } else {
                let n = self.next;
                let action = if n % 1000 == 999 { "update" } else { "no-op" };
                let comma = if n == 0 { "" } else { "," };
                let blob = |c: &str| c.repeat(500);
                self.pending.extend_from_slice(
                    format!(
                        r#"{comma}{{"address":"module.m.aws_x.r[{n}]","mode":"managed","type":"aws_x","change":{{"actions":["{action}"],"before":{{"blob":"{}","tags":{{"a":"b"}}}},"after":{{"blob":"{}","tags":{{"a":"b"}},"list":[1,2,3,4,5,6,7,8]}},"after_unknown":{{}}}}}}"#,
                        blob("y"),
                        blob("x")
                    )
                    .as_bytes(),
                );
            }
            self.next += 1;
        }
        Ok(serve(&self.pending, &mut self.at, buf))
    }
}

fn memory_total() -> String {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib: u64 = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0);
    format!("{:.0} GiB RAM", kib as f64 / 1024.0 / 1024.0)
}

/// The 12-unit, 5-layer, two-account scenario applied with real terraform by two workers per
/// account; wall time against max(critical path, work per account / its workers), both from
/// the job durations the workers measured.
/// A `show -json` plan of `count` AWS resources (a quarter of them missing a required tag),
/// each with a dozen attributes before and after, as real plans have.
fn synthetic_plan(count: usize) -> Vec<u8> {
    let types = [
        "aws_instance",
        "aws_s3_bucket",
        "aws_iam_role",
        "aws_security_group",
    ];
    let changes: Vec<Value> = (0..count)
        .map(|i| {
            let kind = types[i % types.len()];
            let mut tags = json!({ "owner": "platform", "cost-center": "42", "name": format!("r{i}") });
            if i % 4 == 0 {
                tags.as_object_mut().unwrap().remove("cost-center");
            }
            let attributes = |version: usize| {
                json!({
                    "id": format!("{kind}-{i}"), "arn": format!("arn:aws:service:eu-west-1:123456789012:{kind}/{i}"),
                    "name": format!("resource-{i}"), "description": "managed by pipelines", "version": version,
                    "enabled": true, "size": i % 100, "region": "eu-west-1", "zones": ["a", "b", "c"],
                    "settings": { "retention": 30, "encrypted": true, "kms_key": format!("key-{}", i % 7) },
                    "tags": tags,
                })
            };
            json!({
                "address": format!("{kind}.r{i}"), "mode": "managed", "type": kind, "name": format!("r{i}"),
                "provider_name": "registry.terraform.io/hashicorp/aws",
                "change": { "actions": ["update"], "before": attributes(1), "after": attributes(2) },
            })
        })
        .collect();
    serde_json::to_vec(&json!({ "format_version": "1.2", "terraform_version": "1.11.4", "resource_changes": changes }))
        .unwrap()
}

fn median_ms(mut samples: Vec<Duration>) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1000.0
}

/// The example policy sets against a 1,000-resource plan, next to the floor of parsing the same
/// plan JSON once.
fn policy(size: &Size) -> Value {
    use executor_worker::policy::{PlanContext, Policies};
    println!("\n== Policy evaluation: examples/policies against a 1,000-resource plan ==");
    let examples = harness::workspace_root().join("examples/policies");
    let config = config::Config::from_toml(&format!(
        "[[repositories]]\nname = \"infra\"\nurl = \"/srv/git/infra.git\"\n\
         [[accounts]]\nname = \"prod\"\npaths = [\"**\"]\n\
         [[policies]]\npath = {:?}\n[[policies]]\npath = {:?}\nmode = \"warn\"\n",
        examples.join("security"),
        examples.join("advice")
    ))
    .unwrap();
    let policies = Policies::load(&config.policies, &config.policy);
    let resources = 1_000;
    let plan = synthetic_plan(resources);
    let context = PlanContext {
        repository: "infra".into(),
        event: "push".into(),
        unit: "prod/app".into(),
        account: "prod".into(),
        action: "apply".into(),
        commit: "0".repeat(40),
    };
    let mut floor = Vec::new();
    let mut measured = Vec::new();
    let mut rego_parse = Vec::new();
    let mut denies = 0;
    let mut rules = 0;
    let text = std::str::from_utf8(&plan).unwrap();
    for _ in 0..size.policy_rounds {
        let start = Instant::now();
        let parsed: Value = serde_json::from_slice(&plan).unwrap();
        floor.push(start.elapsed());
        std::hint::black_box(parsed);
        let start = Instant::now();
        let input = regorus::Value::from_json_str(text).unwrap();
        rego_parse.push(start.elapsed());
        std::hint::black_box(input);
        let start = Instant::now();
        let report = policies.evaluate(&plan, &context);
        measured.push(start.elapsed());
        assert!(
            report.sets.iter().all(|set| set.error.is_none()),
            "{report:?}"
        );
        denies = report.sets[0].denies.len();
        rules = report.rules();
    }
    let floor_ms = median_ms(floor);
    let evaluation_ms = median_ms(measured);
    let rego_parse_ms = median_ms(rego_parse);
    let ratio = evaluation_ms / floor_ms;
    println!(
        "{resources} resources, {} KiB of plan JSON, {} rules, {denies} denies (capped per rule): \
         evaluation {evaluation_ms:.1} ms, floor (serde_json parse of the plan) {floor_ms:.1} ms: \
         {ratio:.1}x the floor (target <= 5x), median of {}; of which reading the plan into \
         Rego values {rego_parse_ms:.1} ms",
        plan.len() / 1024,
        rules,
        size.policy_rounds
    );
    json!({
        "resources": resources, "plan_bytes": plan.len(), "evaluation_ms": evaluation_ms,
        "floor_ms": floor_ms, "ratio": ratio, "rounds": size.policy_rounds,
        "rego_parse_ms": rego_parse_ms,
    })
}

fn dag() -> Value {
    println!(
        "\n== DAG execution with real terraform: 12 units, 5 layers, 2 accounts x 2 workers =="
    );
    harness::require_terraform();
    let vhost = rabbit::vhost();
    let fixture = Fixture::new();
    let config = fixture.config(&vhost.url);
    let workers_per_account = 2;
    let deployment = Deployment::start(
        fixture.sandbox.path(),
        &config,
        &[("dev", workers_per_account), ("prod", workers_per_account)],
    );
    let run = harness::runs::submit(
        &fixture.sandbox,
        &vhost,
        (fixture.c0.as_str(), fixture.c1.as_str()),
        "push",
        &[],
    );
    let detail = harness::runs::wait_final(&fixture.sandbox, run);
    drop(deployment);
    assert_eq!(detail.run.state, "succeeded", "{detail:#?}");
    let duration: BTreeMap<&str, u64> = detail
        .jobs
        .iter()
        .map(|j| (j.unit.as_str(), j.duration_ms.unwrap()))
        .collect();
    let critical = critical_path(&duration);
    let total: u64 = duration.values().sum();
    let per_account = ["dev", "prod"]
        .iter()
        .map(|account| {
            duration
                .iter()
                .filter(|(unit, _)| scenario::account_of(unit) == *account)
                .map(|(_, ms)| ms)
                .sum::<u64>()
                / workers_per_account as u64
        })
        .max()
        .unwrap();
    let bound = critical.max(per_account);
    let first_start = detail
        .jobs
        .iter()
        .filter_map(|j| j.started_ms)
        .min()
        .unwrap();
    let wall = wall_ms(&detail);
    let ratio = wall as f64 / bound as f64;
    println!(
        "total work {total} ms; critical path {critical} ms; busiest account's work / its workers {per_account} ms"
    );
    println!(
        "bound {bound} ms; wall time {wall} ms from the event (first job started after {} ms): {ratio:.2}x the bound (target <= 1.2x)",
        first_start - detail.run.created_ms
    );
    json!({
        "units": duration.len(), "total_work_ms": total, "critical_path_ms": critical,
        "account_work_per_worker_ms": per_account, "bound_ms": bound, "wall_ms": wall,
        "ratio": ratio,
    })
}

/// A drift run over `units` units with real terraform, 4 plan workers: its wall time against
/// max(critical path, total work / workers), from the jobs' measured durations. Drift checks
/// have no order, so the critical path is the longest check.
fn drift(units: usize) -> Value {
    const WORKERS: usize = 4;
    println!(
        "\n== Drift run with real terraform: {units} units, 1 account x {WORKERS} plan workers =="
    );
    harness::require_terraform();
    let vhost = rabbit::vhost();
    let sandbox = Sandbox::new();
    sandbox.repo.write("README.md", "# infrastructure\n");
    for i in 0..units {
        harness::applies::terraform_data_unit(
            &sandbox,
            &format!("dev/u{i:03}"),
            "world",
            &format!("\"v{i}\""),
        );
    }
    sandbox.repo.commit("units");
    let config = sandbox.write_config_with(
        &vhost.url,
        "[[accounts]]\nname = \"dev\"\npaths = [\"dev/**\"]\n",
        &format!("drift_jobs_per_account = {WORKERS}\nmax_units_per_run = 10000\n"),
    );
    let deployment = Deployment::start(sandbox.path(), &config, &[("dev", WORKERS)]);
    let run = harness::runs::submit_drift(&sandbox, &vhost, &[]);
    let detail = harness::poll_until(Duration::from_secs(1800), "the drift run", || {
        harness::runs::status(&sandbox, run).filter(|d| d.run.state != "running")
    });
    drop(deployment);
    assert_eq!(detail.run.state, "succeeded", "{detail:#?}");
    let durations: Vec<u64> = detail.jobs.iter().map(|j| j.duration_ms.unwrap()).collect();
    let total: u64 = durations.iter().sum();
    let critical = durations.iter().copied().max().unwrap_or(0);
    let per_worker = total / WORKERS as u64;
    let bound = critical.max(per_worker);
    let wall = wall_ms(&detail);
    let ratio = wall as f64 / bound as f64;
    println!(
        "{} checks; total work {total} ms (mean {} ms per check); longest check {critical} ms; work / workers {per_worker} ms",
        durations.len(),
        total / durations.len().max(1) as u64
    );
    println!(
        "bound {bound} ms; wall time {wall} ms from the event: {ratio:.2}x the bound (target <= 1.2x)"
    );
    json!({
        "units": durations.len(), "workers": WORKERS, "total_work_ms": total,
        "critical_path_ms": critical, "work_per_worker_ms": per_worker, "bound_ms": bound,
        "wall_ms": wall, "ratio": ratio,
    })
}

/// From a run's event to its last job's outcome.
fn wall_ms(detail: &RunDetail) -> u64 {
    let last_end = detail
        .jobs
        .iter()
        .filter_map(|j| j.finished_ms)
        .max()
        .unwrap();
    last_end - detail.run.created_ms
}

/// The longest chain of job durations along the scenario's dependencies.
fn critical_path(duration: &BTreeMap<&str, u64>) -> u64 {
    fn finish(unit: &str, duration: &BTreeMap<&str, u64>, memo: &mut BTreeMap<String, u64>) -> u64 {
        if let Some(done) = memo.get(unit) {
            return *done;
        }
        let ready = scenario::dependencies(unit)
            .iter()
            .map(|dependency| finish(dependency, duration, memo))
            .max()
            .unwrap_or(0);
        let done = ready + duration[unit];
        memo.insert(unit.to_owned(), done);
        done
    }
    let mut memo = BTreeMap::new();
    duration
        .keys()
        .map(|unit| finish(unit, duration, &mut memo))
        .max()
        .unwrap_or(0)
}

/// `main.tf` of a unit whose apply runs `command` (a `null_resource` with `local-exec`).
fn printing_unit_tf(unit: &str, state_dir: &std::path::Path, command: &str) -> String {
    let command = command.replace('\\', "\\\\").replace('"', "\\\"");
    format!(
        "terraform {{\n  required_providers {{\n    null = {{\n      source  = \"hashicorp/null\"\n      version = \"2.1.2\"\n    }}\n  }}\n  \
         backend \"local\" {{\n    path = \"{}/{unit}.tfstate\"\n  }}\n}}\n\n\
         resource \"null_resource\" \"print\" {{\n  triggers = {{\n    always = timestamp()\n  }}\n\n  \
         provisioner \"local-exec\" {{\n    command = \"{command}\"\n  }}\n}}\n",
        state_dir.display()
    )
}

/// A deployment (one apply worker) whose one unit's apply runs `command`, with the web page
/// on; the job's final detail, the web address and the deployment (still running).
fn run_printing_unit(
    command: &str,
    executor_env: &[(&str, &str)],
) -> (Sandbox, Vhost, Deployment, String, Uuid, String, String) {
    harness::require_terraform();
    harness::require_null_provider();
    let vhost = rabbit::vhost();
    let sandbox = Sandbox::new();
    sandbox.repo.write("README.md", "# infrastructure\n");
    let c0 = sandbox.repo.commit("c0");
    sandbox.repo.write(
        "dev/printer/main.tf",
        &printing_unit_tf("dev/printer", &sandbox.state_dir(), command),
    );
    sandbox
        .repo
        .write("dev/printer/pipelines.hcl", "dependencies = []\n");
    let c1 = sandbox.repo.commit("c1: a printer");
    let config = sandbox.write_config(
        &vhost.url,
        &[("dev", "dev/**")],
        "web_address = \"127.0.0.1:0\"\n",
    );
    let deployment =
        Deployment::start_with_executor_env(sandbox.path(), &config, &[("dev", 1)], executor_env);
    let web =
        harness::process::logged_address(|| deployment.dispatcher_log(), "Serving the web page");
    let run = harness::runs::submit(&sandbox, &vhost, (&c0, &c1), "push", &[]);
    (sandbox, vhost, deployment, web, run, c0, c1)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// The web page's live logs: how long a line terraform prints takes to reach an open page
/// (next to one broker hop), a 50 MB log (the job's time with streaming on and off, the
/// dispatcher's peak memory, the stored copy against the worker's file), and the dispatcher's
/// memory while 20 pages follow a 1,000-job run.
fn logs(quick: bool) -> Value {
    println!("\n== Live logs through the broker to an open page ==");
    let lines = if quick { 40 } else { 400 };
    let ticker =
        format!("for i in $(seq 1 {lines}); do echo \"tick $(date +%s%N)\"; sleep 0.05; done");
    let (sandbox, vhost, deployment, web, run, ..) = run_printing_unit(&ticker, &[]);
    let floor = runtime().block_on(publish_roundtrip(&vhost, 200));
    let job = harness::poll_until(Duration::from_secs(300), "the ticker to run", || {
        let detail = harness::runs::status(&sandbox, run)?;
        let job = detail.jobs.first()?.clone();
        (job.state == "running").then_some(job.job_id)
    });
    let opened = now_ns();
    let mut stream = harness::sse::Stream::open(&web, &format!("/jobs/{job}/stream"))
        .expect("the job's log stream");
    let mut latencies: Vec<f64> = Vec::new();
    while let Some(event) = stream.next_event() {
        match event.name.as_str() {
            "chunk" => {
                let arrived = now_ns();
                let text: String = serde_json::from_str(&event.data).unwrap();
                for line in text.lines() {
                    let Some(at) = line
                        .split("tick ")
                        .nth(1)
                        .and_then(|ns| ns.trim().parse::<u128>().ok())
                    else {
                        continue;
                    };
                    // Lines printed before the page opened arrive as its backlog.
                    if at > opened {
                        latencies.push((arrived - at) as f64 / 1e6);
                    }
                }
            }
            "end" => break,
            _ => {}
        }
    }
    drop(deployment);
    latencies.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
    println!(
        "{} lines printed by terraform, seen in an open page: p50 {p50:.1} ms, p99 {p99:.1} ms",
        latencies.len()
    );
    println!(
        "floor: one confirmed broker hop (publish + consume): p50 {:.1} ms, p99 {:.1} ms; a line takes one such hop plus the worker's and the page's file reads",
        floor.0, floor.1
    );

    println!("\n== A 50 MB log ==");
    let megabytes = if quick { 5 } else { 50 };
    let big = format!(
        "yes 'the quick brown fox jumps over the lazy dog 0123456789' | head -c {}",
        megabytes * 1024 * 1024
    );
    let mut durations = Vec::new();
    let mut peak_mib = 0.0;
    for streaming in [true, false] {
        let env: &[(&str, &str)] = if streaming {
            &[]
        } else {
            &[("PIPELINES_EXECUTOR__STREAM_LOGS", "false")]
        };
        let (sandbox, _vhost, deployment, web, run, ..) = run_printing_unit(&big, env);
        let detail = harness::poll_until(Duration::from_secs(900), "the big log's run", || {
            harness::runs::status(&sandbox, run).filter(|d| d.run.state != "running")
        });
        let job = &detail.jobs[0];
        assert_eq!(job.state, "succeeded", "{detail:#?}");
        durations.push(job.duration_ms.unwrap());
        if streaming {
            peak_mib = rss(deployment.dispatcher_pid()).1 as f64 / 1024.0;
            let worker_file = job.log.clone().unwrap();
            let worker_file = std::fs::read(worker_file.split_once(':').unwrap().1).unwrap();
            let stored = harness::poll_until(Duration::from_secs(300), "the stored log", || {
                // `<attempt>-<stream>-<worker>.log`
                let dir = sandbox
                    .dispatcher_state_dir()
                    .join("logs")
                    .join(run.to_string())
                    .join(job.job_id.to_string());
                let (prefix, suffix) = (
                    format!("{}-", job.attempt),
                    format!("-{}.log", job.worker.as_deref().unwrap()),
                );
                let path = std::fs::read_dir(&dir)
                    .ok()?
                    .flatten()
                    .map(|e| e.path())
                    .find(|p| {
                        let name = p.file_name().unwrap().to_string_lossy();
                        name.starts_with(&prefix) && name.ends_with(&suffix)
                    })?;
                let end = path.with_extension("end");
                std::fs::read_to_string(end)
                    .ok()?
                    .starts_with("complete ")
                    .then(|| std::fs::read(&path).unwrap())
            });
            assert!(
                stored == worker_file,
                "the stored log differs from the worker's"
            );
            println!(
                "stored copy: {} bytes, equal to the worker's log byte for byte; page at http://{web}/jobs/{}",
                stored.len(),
                job.job_id
            );
        }
        drop(deployment);
    }
    println!(
        "the job printing {megabytes} MB took {} ms with streaming, {} ms without ({:.2}x); dispatcher peak RSS {peak_mib:.1} MiB (target < 100 MiB)",
        durations[0],
        durations[1],
        durations[0] as f64 / durations[1] as f64
    );

    let pages = pages(quick);
    json!({
        "line_to_page_p50_ms": p50, "line_to_page_p99_ms": p99, "lines": latencies.len(),
        "floor_hop_p50_ms": floor.0, "floor_hop_p99_ms": floor.1,
        "big_log_mb": megabytes, "big_log_job_ms_streaming": durations[0],
        "big_log_job_ms_without": durations[1], "big_log_dispatcher_peak_mib": peak_mib,
        "pages": pages["pages"], "page_run_jobs": pages["page_run_jobs"],
        "no_pages_dispatcher_peak_mib": pages["no_pages_dispatcher_peak_mib"],
        "pages_dispatcher_peak_mib": pages["pages_dispatcher_peak_mib"],
    })
}

/// The dispatcher's peak memory while 20 pages follow a 1,000-job run, next to the same run
/// with no page open.
fn pages(quick: bool) -> Value {
    println!("\n== 20 open pages following a 1,000-job run ==");
    let jobs = if quick { 200 } else { 1000 };
    // The same run with no page open first: what the pages add is the difference.
    let mut peaks = Vec::new();
    for pages in [0, 20] {
        let (idle, peak, updates) = follow_run_pages(jobs, pages);
        println!(
            "{jobs} jobs, {pages} pages following (updates per page: {}): dispatcher RSS {:.1} MiB idle, peak {:.1} MiB{}",
            match (updates.iter().min(), updates.iter().max()) {
                (Some(min), Some(max)) => format!("{min}..{max}"),
                _ => "none".to_owned(),
            },
            idle,
            peak,
            if pages > 0 { " (target < 100 MiB)" } else { "" }
        );
        peaks.push(peak);
    }
    json!({
        "pages": 20, "page_run_jobs": jobs, "no_pages_dispatcher_peak_mib": peaks[0],
        "pages_dispatcher_peak_mib": peaks[1],
    })
}

/// A no-op run of `jobs` jobs on 4 workers while `pages` pages follow it on the web page: the
/// dispatcher's RSS before (MiB), its peak, and how many updates each page got.
fn follow_run_pages(jobs: usize, pages: usize) -> (f64, f64, Vec<usize>) {
    let world = NoopWorld::start_with(4, "web_address = \"127.0.0.1:0\"\n");
    let web = harness::process::logged_address(
        || world.deployment.dispatcher_log(),
        "Serving the web page",
    );
    let (idle, _) = world.dispatcher_rss();
    let units: Vec<String> = (0..jobs).map(|i| format!("dev/p{i:05}")).collect();
    let run = world.submit(units, vec![]);
    let followers: Vec<std::thread::JoinHandle<usize>> = (0..pages)
        .map(|_| {
            let web = web.clone();
            std::thread::spawn(move || {
                let mut stream =
                    harness::poll_until(Duration::from_secs(60), "the run page", || {
                        harness::sse::Stream::open(&web, &format!("/runs/{run}/events"))
                    });
                let mut updates = 0;
                while let Some(event) = stream.next_event() {
                    match event.name.as_str() {
                        "update" => updates += 1,
                        "end" => break,
                        _ => {}
                    }
                }
                updates
            })
        })
        .collect();
    let detail = world.wait_final(run, Duration::from_secs(600));
    assert_eq!(detail.run.state, "succeeded");
    let updates = followers
        .into_iter()
        .map(|page| page.join().unwrap())
        .collect();
    let (_, peak) = world.dispatcher_rss();
    (idle as f64 / 1024.0, peak as f64 / 1024.0, updates)
}

/// The run database's engines side by side: no-op throughput with 4 workers and
/// event-to-job-start latency on SQLite and on PostgreSQL, then the failover time of two
/// dispatchers on PostgreSQL (leader killed → first job granted by the new leader) for two
/// lease lengths.
fn stores(size: &Size) -> Value {
    println!("\n== Run database: SQLite and PostgreSQL, 4 workers ==");
    let jobs = size.throughput_jobs;
    println!(
        "{:>10} {:>8} {:>10} {:>18} {:>12} {:>12} {:>12}",
        "store", "jobs", "jobs/s", "dispatcher ms/job", "start p50", "start p99", "start max"
    );
    let mut engines = Vec::new();
    for (name, engine) in [("sqlite", Engine::Sqlite), ("postgres", Engine::Postgres)] {
        let world = NoopWorld::start_on(engine, 4, "");
        let units: Vec<String> = (0..jobs).map(|i| format!("dev/u{i:05}")).collect();
        let (dispatcher_before, _) = world.cpu_seconds(4);
        let seconds = world.run_noop_jobs(units);
        let (dispatcher_after, _) = world.cpu_seconds(4);
        let rate = jobs as f64 / seconds;
        let cpu_ms = (dispatcher_after - dispatcher_before) * 1000.0 / jobs as f64;
        // Latency: one-unit runs at 50/s, publish to grant.
        let latencies: Vec<f64> = start_latencies(&world, size.latency_events)
            .into_iter()
            .map(|event| event.ms as f64)
            .collect();
        let (p50, p99, max) = (
            percentile(&latencies, 0.50),
            percentile(&latencies, 0.99),
            *latencies.last().unwrap(),
        );
        println!(
            "{name:>10} {jobs:>8} {rate:>10.0} {cpu_ms:>18.2} {p50:>10.0}ms {p99:>10.0}ms {max:>10.0}ms"
        );
        engines.push(json!({
            "store": name, "jobs": jobs, "jobs_per_sec": rate, "dispatcher_cpu_ms_per_job": cpu_ms,
            "start_p50_ms": p50, "start_p99_ms": p99, "start_max_ms": max,
        }));
        drop(world);
    }

    println!("\n== Failover: two dispatchers on PostgreSQL, the leader killed ==");
    println!(
        "{:>10} {:>8} {:>14} {:>14} {:>14}",
        "lease", "rounds", "min", "median", "max"
    );
    let rounds = size.failover_rounds;
    let mut failovers = Vec::new();
    for &lease in &size.failover_leases {
        let mut world = NoopWorld::start_on(
            Engine::Postgres,
            2,
            &format!("leader_lease_seconds = {lease}\n"),
        );
        let mut leader: Option<harness::process::Service> = None;
        let mut took = Vec::new();
        for round in 0..rounds {
            let standby = world
                .deployment
                .start_another_dispatcher(&format!("standby-{lease}-{round}"));
            harness::poll_until(Duration::from_secs(60), "a standby", || {
                standby.log_text().contains("Standing by").then_some(())
            });
            // The leader: the deployment's first dispatcher, then each round's new one.
            let killed = now_ms();
            match leader.take() {
                None => world.deployment.kill_dispatcher(),
                Some(mut old) => old.kill(),
            }
            let run = world.submit(vec![format!("dev/f{lease}-{round}")], vec![]);
            let detail = world.wait_final(run, Duration::from_secs(120));
            let granted = detail.jobs[0].started_ms.unwrap();
            took.push((granted - killed) as f64);
            leader = Some(standby);
        }
        took.sort_by(f64::total_cmp);
        let (min, median, max) = (took[0], percentile(&took, 0.5), took[took.len() - 1]);
        println!(
            "{:>9}s {rounds:>8} {:>12.0}ms {:>12.0}ms {:>12.0}ms",
            lease, min, median, max
        );
        failovers.push(json!({
            "lease_seconds": lease, "rounds": rounds,
            "min_ms": min, "median_ms": median, "max_ms": max,
        }));
        drop(leader);
        drop(world);
    }
    println!(
        "failover: from kill -9 of the leader to the first job granted by the new one (a run submitted right after the kill); bound: the lease plus a quarter of it (the standbys' poll) plus restoring"
    );
    json!({ "engines": engines, "failover": failovers })
}
