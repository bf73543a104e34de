#!/usr/bin/env python3
"""Turn the bench program's results (target/bench/results.json) into the PNG charts
BENCHMARKS.md shows: throughput against workers, and event-to-job-start latency percentiles.

    python3 scripts/plot_benchmarks.py [RESULTS_JSON] [OUT_DIR]
"""
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


def throughput(results, out):
    data = results["throughput"]
    runs = data["runs"]
    workers = [r["workers"] for r in runs]
    rates = [r["jobs_per_sec"] for r in runs]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(workers, rates, marker="o", label="no-op jobs/s through the pipeline")
    ceilings = [r.get("cpu_ceiling_jobs_per_sec") for r in runs]
    if all(ceilings):
        ax.plot(workers, ceilings, marker="x", linestyle="-.", color="tab:orange",
                label=f"CPU ceiling: {data['cores']} cores / measured CPU per job")
    ax.axhline(1000, color="tab:red", linestyle="--", label="target 1,000 jobs/s")
    ax.axhline(data["bound_jobs_per_sec"], color="tab:green", linestyle=":",
               label=f"broker floor / 4 messages per job ({data['bound_jobs_per_sec']:.0f})")
    ax.set_xlabel("executor workers")
    ax.set_ylabel("jobs per second")
    ax.set_xticks(workers)
    ax.set_ylim(bottom=0)
    ax.set_title("Throughput against workers")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=110)


def latency(results, out):
    data = results["latency"]
    names = ["p50", "p90", "p99", "max"]
    values = [data[f"{n}_ms"] for n in names]
    fig, ax = plt.subplots(figsize=(6, 4))
    bars = ax.bar(names, values, color="tab:blue")
    ax.bar_label(bars, fmt="%d ms")
    ax.axhline(50, color="tab:red", linestyle="--", label="target: p99 < 50 ms")
    ax.axhline(3 * data["floor_hop_p50_ms"], color="tab:green", linestyle=":",
               label=f"floor: 3 broker hops at p50 ({3 * data['floor_hop_p50_ms']:.1f} ms)")
    ax.set_ylabel("event to job start, ms")
    ax.set_title(f"Latency, 4 workers, {data['runs']} runs at {data['rate_per_sec']}/s")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=110)


def main():
    root = Path(__file__).resolve().parent.parent
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else root / "target/bench/results.json"
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else root / "benchmarks"
    out.mkdir(parents=True, exist_ok=True)
    results = json.loads(source.read_text())
    made = []
    if "throughput" in results:
        throughput(results, out)
        made.append("throughput.png")
    if "latency" in results:
        latency(results, out)
        made.append("latency.png")
    print(f"wrote {', '.join(made) or 'nothing'} to {out}")


if __name__ == "__main__":
    main()
