//! The benchmark program still runs: every pipeline benchmark at its quick sizes, against the
//! real RabbitMQ, real processes and real terraform, writing every figure BENCHMARKS.md
//! records. No figure is judged here (benchmarks are not tests); this only keeps the program
//! from rotting between the sessions that run it in full (it once did: queue names and worker
//! names of the role split, and a supersession that cancelled its latency runs).
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: fail loudly.

use std::process::Command;

use serde_json::Value;

#[test]
fn the_benchmark_program_runs_every_pipeline_benchmark_at_quick_sizes() {
    harness::require_terraform();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("results.json");
    let output = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["all", "--quick", "--workers", "1", "--out"])
        .arg(&out)
        .output()
        .expect("the bench binary starts");
    let transcript = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "bench failed:\n{transcript}");
    let results: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let figure = |path: &[&str]| {
        let mut value = &results;
        for key in path {
            value = &value[*key];
        }
        value
            .as_f64()
            .unwrap_or_else(|| panic!("no figure {path:?} in {results:#}"))
    };
    assert!(figure(&["floor", "msgs_per_sec"]) > 0.0);
    let run = &results["throughput"]["runs"][0];
    assert_eq!(run["jobs"], 500, "every no-op job of the run ended: {run}");
    for key in ["jobs_per_sec", "cpu_ms_per_job", "cpu_ceiling_jobs_per_sec"] {
        assert!(run[key].as_f64().is_some_and(|v| v > 0.0), "{key} in {run}");
    }
    assert!(
        run["cpu_seconds"]["executors"]
            .as_f64()
            .is_some_and(|v| v > 0.0),
        "the executors' CPU is read from the workers that ran the jobs: {run}"
    );
    assert_eq!(results["latency"]["runs"], 50, "every latency run started");
    assert!(figure(&["latency", "p99_ms"]) >= figure(&["latency", "p50_ms"]));
    assert!(figure(&["memory", "dispatcher_queued_mib"]) > 0.0);
    assert!(figure(&["memory", "executor_idle_mib"]) > 0.0);
    assert!(figure(&["dag", "wall_ms"]) >= figure(&["dag", "critical_path_ms"]));
    assert_eq!(results["drift"]["units"], 40, "every unit was checked");
    for engine in [0, 1] {
        let row = &results["stores"]["engines"][engine];
        for key in ["jobs_per_sec", "dispatcher_cpu_ms_per_job", "start_p99_ms"] {
            assert!(row[key].as_f64().is_some_and(|v| v > 0.0), "{key} in {row}");
        }
    }
    assert_eq!(results["stores"]["engines"][1]["store"], "postgres");
    let failover = &results["stores"]["failover"][0];
    assert!(
        failover["median_ms"].as_f64().is_some_and(|ms| ms > 0.0),
        "a job was granted after the leader was killed: {failover}"
    );
    assert!(figure(&["drift", "wall_ms"]) >= figure(&["drift", "critical_path_ms"]));
}
