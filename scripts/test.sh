#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs terraform (and Chromium for the browser tests)
# when missing, starts RabbitMQ and PostgreSQL when they are not running, then checks formatting, lints,
# architecture invariants and every test.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

use_cache_dirs
ensure_terraform
ensure_null_provider
ensure_rabbitmq
ensure_postgres
ensure_chromium

say "Formatting"
cargo fmt --all -- --check

say "Lints"
cargo clippy --workspace --all-targets --locked --quiet -- -D warnings

say "Architecture: proto-types depends on neither tokio nor lapin, even transitively"
if cargo tree --locked -p proto-types -e normal --prefix none | grep -E '^(tokio|lapin) ' ; then
    die "proto-types pulls in tokio or lapin"
fi

say "Tests (RabbitMQ, git and $(command -v tofu || command -v terraform))"
cargo test --workspace --locked
