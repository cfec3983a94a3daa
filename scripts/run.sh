#!/usr/bin/env bash
# Quick start: makes sure RabbitMQ and Redis run locally, then runs one worker in the background and the
# server in the foreground (Ctrl-C stops both). Extra arguments go to the server.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh

cargo build --release --locked -p herald-server -p herald-worker
./target/release/herald-worker &
worker=$!
trap 'kill -TERM $worker 2>/dev/null; wait $worker 2>/dev/null' EXIT
./target/release/herald-server "$@"
