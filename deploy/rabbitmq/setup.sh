#!/usr/bin/env bash
# Apply Pipelines' least-privilege RabbitMQ set-up to a running broker: one vhost, every exchange,
# queue, binding and policy, and one user per component (admin, dispatcher, orchestrator, one
# executor per account) with the narrowest permissions. Idempotent: run it again after adding an
# account to the policy file.
#
#   export PIPELINES_RABBITMQ_PASSWORD_DISPATCHER=...   # and _ADMIN, _ORCHESTRATOR, _ORCHESTRATOR_DEPLOY, _EXECUTOR_<ACCOUNT>_<ROLE>
#   deploy/rabbitmq/setup.sh /etc/pipelines/pipelines.toml [VHOST]
#
# A password that is not set is generated and printed once on stderr. Run it where `rabbitmqctl`
# reaches the broker (on a broker node, or with RABBITMQ_NODENAME / --node set up for it).
set -euo pipefail

config=${1:?usage: setup.sh POLICY_FILE [VHOST]}
vhost=${2:-pipelines}
pipelines=${PIPELINES_BIN:-pipelines}

umask 077
definitions=$(mktemp --suffix=.json)
trap 'rm -f "$definitions"' EXIT

# Password hashes only: the file never holds a password.
"$pipelines" broker definitions --config "$config" --vhost "$vhost" > "$definitions"
rabbitmqctl import_definitions "$definitions"

# RabbitMQ 3.12 and later take the consumer timeout per queue; older versions need
# `consumer_timeout` in rabbitmq.conf (see rabbitmq.conf next to this script).
echo "Imported definitions for vhost $vhost. Users:"
rabbitmqctl -q list_permissions -p "$vhost"
