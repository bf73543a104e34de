#!/usr/bin/env bash
# Every benchmark in one command, with the figures BENCHMARKS.md records and the charts it
# shows: the pipeline benchmarks (broker floor, no-op throughput against workers, event-to-job-
# start latency, memory, DAG execution with real terraform), then change detection.
#
#   bash scripts/bench.sh            # full sizes (about 10 minutes on 2 cores)
#   bash scripts/bench.sh --quick    # small sizes, to check the programs work
#
# Needs what the tests need (it installs terraform and starts RabbitMQ like scripts/test.sh),
# and python3 for the charts (matplotlib is installed into .tools/python when missing).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

use_cache_dirs
ensure_terraform
ensure_null_provider
ensure_rabbitmq
ensure_postgres

quick=()
detection=()
if [[ "${1:-}" == "--quick" ]]; then
    quick=(--quick)
    detection=(1000)
fi

say "Pipeline benchmarks (release build)"
results="$CARGO_TARGET_DIR/bench/results.json"
cargo run --release --locked --quiet -p harness --bin bench -- all "${quick[@]}" --out "$results"

say "Charts"
if ! python3 -c 'import matplotlib' 2>/dev/null; then
    if [[ ! -d "$TOOLS/python/matplotlib" ]]; then
        say "Installing matplotlib into $TOOLS/python"
        python3 -m pip install --quiet --target "$TOOLS/python" matplotlib
    fi
    export PYTHONPATH="$TOOLS/python${PYTHONPATH:+:$PYTHONPATH}"
fi
python3 scripts/plot_benchmarks.py "$results" benchmarks

say "Change detection"
cargo bench --locked --quiet -p orchestrator --bench detection -- "${detection[@]}"
