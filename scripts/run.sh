#!/usr/bin/env bash
# Distributed mode on one machine: makes sure RabbitMQ and Redis run locally, then runs one worker in
# the background and the server in the foreground (Ctrl-C stops both). Extra arguments go to the server;
# WORKER_ARGS to the worker, for example WORKER_ARGS='--model sentiment="python3 examples/python/slow_sentiment.py"'.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh

cargo build --release --locked -p herald-server -p herald-worker
bin="${CARGO_TARGET_DIR:-./target}/release"
# Both URLs make the server distributed (without them it would run embedded).
export HERALD_AMQP_URL="${HERALD_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
export HERALD_REDIS_URL="${HERALD_REDIS_URL:-redis://127.0.0.1:6379}"
# WORKER_ARGS is split as a shell would, so a --model command line keeps its quotes.
eval "worker_args=(${WORKER_ARGS:-})"
"$bin/herald-worker" "${worker_args[@]}" &
worker=$!
trap 'kill -TERM $worker 2>/dev/null; wait $worker 2>/dev/null' EXIT
"$bin/herald-server" "$@"
