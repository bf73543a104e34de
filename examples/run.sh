#!/usr/bin/env bash
# The bundled example, end to end, in embedded mode (no RabbitMQ needed):
#   1. turns examples/multi-account/repo into a git repository with two commits
#      (c0: README only; c1: seven units across three accounts);
#   2. `pipelines run --event push` c0..c1 applies every unit in dependency order;
#   3. a third commit changes dev/database, and `pipelines run --event pull-request` plans just it.
# Installs terraform into .tools/ when neither terraform nor tofu is on PATH.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
cd "$ROOT"

command -v git >/dev/null 2>&1 || die "git is needed to build the example repository"
use_cache_dirs
ensure_terraform

say "Building pipelines"
cargo build --quiet --locked -p pipelines
PIPELINES="$CARGO_TARGET_DIR/debug/pipelines"

WORK="${PIPELINES_EXAMPLE_DIR:-$ROOT/.pipelines-example}"
rm -rf "$WORK"
mkdir -p "$WORK/state"
REPO="$WORK/example-infra"
cp -R examples/multi-account/repo "$REPO"
# Units keep their state outside the repository, in this run's state directory.
find "$REPO" -name '*.tf' -exec sed -i.bak "s|@STATE_DIR@|$WORK/state|g" {} + -exec rm -f {}.bak \;
sed "s|@REPO@|$REPO|" examples/multi-account/pipelines.toml > "$WORK/pipelines.toml"

git_in_repo() { git -C "$REPO" -c user.name=Example -c user.email=example@localhost -c commit.gpgsign=false "$@"; }
git_in_repo init --quiet --initial-branch=main
git_in_repo add README.md
git_in_repo commit --quiet -m "c0: describe the repository"
git_in_repo add --all
git_in_repo commit --quiet -m "c1: seven units in three accounts"

say "Push c0..c1: apply every unit, dependencies first"
"$PIPELINES" run --repo "$REPO" --base HEAD~1 --head HEAD --event push --config "$WORK/pipelines.toml"

say "What prod/app's state now says (it embeds its dependencies' outputs):"
grep -o '"value": "[^"]*"' "$WORK/state/prod/app.tfstate" | head -1 | sed 's/^/    /'

say "A pull request changing dev/database: plan only what it touches"
git_in_repo checkout --quiet -b move-database
sed -i.bak 's|cidrhost(data.terraform_remote_state.network.outputs.cidr, 5)|cidrhost(data.terraform_remote_state.network.outputs.cidr, 6)|' "$REPO/dev/database/main.tf" && rm -f "$REPO/dev/database/main.tf.bak"
git_in_repo commit --quiet -am "Move the dev database to .6"
"$PIPELINES" run --repo "$REPO" --base main --head move-database --event pull-request --pr 1 --config "$WORK/pipelines.toml"

say "Done. The repository, policy and state files are in $WORK"
