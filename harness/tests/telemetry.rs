//! One run, one trace: the orchestrator, the dispatcher and an executor run as separate
//! processes, export their spans over OTLP/HTTP to a collector the test runs, and the spans
//! form one tree. Usage data rides on that trace unless opted out.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: fail loudly.

use std::collections::BTreeMap;
use std::time::Duration;

use harness::applies::{Behaviour, Units};
use harness::deployment::Deployment;
use harness::otlp::{Collector, Span};
use harness::poll_until;
use harness::rabbit::Vhost;
use harness::runs::setup;
use harness::sandbox::Sandbox;

/// A finished run and what it ran on. Fields drop in order: the services before their files.
struct Traced {
    run_id: String,
    deployment: Deployment,
    _sandbox: Sandbox,
    _vhost: Vhost,
}

/// Runs a two-unit push (net, then app) with every process exporting to `collector`.
/// `opt_out` sets `PIPELINES_TELEMETRY_OPT_OUT=1` for every process.
fn traced_run(collector: &Collector, opt_out: bool) -> Traced {
    let (vhost, sandbox) = setup();
    let units = Units::new(&sandbox);
    let c0 = units.readme_only();
    let quick = Behaviour::Succeed { seconds: 0 };
    let c1 = units.commit(
        "c1: two units",
        1,
        &[("dev/net", &[], quick), ("dev/app", &["dev/net"], quick)],
    );
    let config = sandbox.write_config(&vhost.url, &[("dev", "dev/**")], "");
    let mut env: Vec<(&str, String)> = collector.env();
    if opt_out {
        env.push(("PIPELINES_TELEMETRY_OPT_OUT", "1".into()));
    }
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let deployment =
        Deployment::start_with_env(sandbox.path(), &config, &[("dev", 1)], &env_refs, &[]);
    let mut command = sandbox.pipelines_on_range(
        "orchestrate",
        &c0,
        &c1,
        "push",
        &[
            "--repo-name",
            "infra",
            "--broker",
            &vhost.url,
            "--wait",
            "--format",
            "json",
        ],
    );
    command.envs(env_refs.iter().copied());
    let run = harness::process::run(command, harness::runs::DEADLINE);
    assert_eq!(run.code(), Some(0), "{}", run.transcript());
    let status: proto_types::RunStatus = serde_json::from_str(&run.stdout).unwrap();
    Traced {
        run_id: status.run_id.to_string(),
        deployment,
        _sandbox: sandbox,
        _vhost: vhost,
    }
}

/// Waits until the collector holds the run's spans from all three processes, including the
/// end of the run (the dispatcher's `run_finished`).
fn spans_of_run(collector: &Collector, run_id: &str) -> Vec<Span> {
    poll_until(Duration::from_secs(60), "the run's spans to arrive", || {
        let spans = collector.spans();
        let root = spans.iter().find(|s| {
            s.name == "orchestrate"
                && s.attributes.get("run_id").map(String::as_str) == Some(run_id)
        })?;
        let trace: Vec<Span> = spans
            .iter()
            .filter(|s| s.trace_id == root.trace_id)
            .cloned()
            .collect();
        let jobs = trace.iter().filter(|s| s.name == "job").count();
        let finished = trace.iter().any(|s| s.name == "run_finished");
        (jobs == 2 && finished).then_some(trace)
    })
}

#[test]
fn a_run_is_one_trace_from_orchestrate_through_dispatch_and_jobs_to_terraform_steps() {
    let collector = Collector::start();
    let mut traced = traced_run(&collector, false);
    let run_id = traced.run_id.clone();
    let spans = spans_of_run(&collector, &run_id);
    let by_id: BTreeMap<&str, &Span> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let parent = |span: &Span| by_id.get(span.parent_id.as_str()).copied();

    let root = spans.iter().find(|s| s.name == "orchestrate").unwrap();
    assert_eq!(
        (root.service.as_str(), root.parent_id.as_str()),
        ("pipelines-orchestrate", ""),
        "{root:#?}"
    );
    let dispatch = spans
        .iter()
        .find(|s| s.name == "dispatch")
        .expect("a dispatch span in the trace");
    assert_eq!(dispatch.service, "pipelines-dispatch");
    assert_eq!(
        parent(dispatch).map(|p| p.name.as_str()),
        Some("orchestrate")
    );
    assert_eq!(dispatch.attributes.get("run_id"), Some(&run_id));

    let jobs: Vec<&Span> = spans.iter().filter(|s| s.name == "job").collect();
    for job in &jobs {
        assert_eq!(job.service, "pipelines-execute");
        assert_eq!(
            parent(job).map(|p| p.span_id.as_str()),
            Some(dispatch.span_id.as_str()),
            "{job:#?}"
        );
        for key in [
            "run_id",
            "job_id",
            "unit",
            "account",
            "action",
            "repository",
        ] {
            assert!(
                job.attributes.contains_key(key),
                "job span without {key}: {job:#?}"
            );
        }
        assert_eq!(
            job.attributes.get("action").map(String::as_str),
            Some("apply")
        );
    }
    let units: Vec<&str> = jobs.iter().map(|j| j.attributes["unit"].as_str()).collect();
    assert!(
        units.contains(&"dev/net") && units.contains(&"dev/app"),
        "{units:?}"
    );

    // Every terraform step hangs under a job, through the tool span.
    let steps: Vec<&Span> = spans.iter().filter(|s| s.name == "step").collect();
    let names: Vec<&str> = steps
        .iter()
        .map(|s| s.attributes["step"].as_str())
        .collect();
    for step in ["init", "plan", "show", "apply"] {
        assert_eq!(
            names.iter().filter(|n| **n == step).count(),
            2,
            "{step} steps: {names:?}"
        );
    }
    for step in &steps {
        let mut chain = vec![step.name.as_str()];
        let mut at = *step;
        while let Some(up) = parent(at) {
            chain.push(up.name.as_str());
            at = up;
        }
        assert_eq!(chain.first(), Some(&"step"));
        assert!(
            chain.ends_with(&["job", "dispatch", "orchestrate"]),
            "chain {chain:?}"
        );
    }

    // The usage data: one event for the finished run, in the same trace.
    let finished = spans.iter().find(|s| s.name == "run_finished").unwrap();
    assert!(
        finished.events.iter().any(|e| e == "pipelines.usage"),
        "{finished:#?}"
    );
    assert_eq!(
        spans.iter().filter(|s| s.trace_id != root.trace_id).count(),
        0
    );
    traced.deployment.assert_running();
}

#[test]
fn with_telemetry_opted_out_no_usage_data_is_emitted() {
    let collector = Collector::start();
    let mut traced = traced_run(&collector, true);
    let spans = spans_of_run(&collector, &traced.run_id);
    assert!(
        spans.iter().any(|s| s.name == "run_finished"),
        "traces are still exported"
    );
    let usage: Vec<&Span> = spans
        .iter()
        .filter(|s| s.events.iter().any(|e| e == "pipelines.usage"))
        .collect();
    assert!(
        usage.is_empty(),
        "usage data despite the opt-out: {usage:#?}"
    );
    traced.deployment.assert_running();
}
