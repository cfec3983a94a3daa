#!/usr/bin/env bash
# End-to-end benchmark: starts a release server and worker on names of their own (so nothing else on
# the broker is touched), runs `herald-loadgen` with the given arguments against them, then stops both
# and deletes the queue and the Redis keys it used.
#   scripts/bench.sh latency --jobs 2000
#   WORKER_ARGS="--concurrency 2 --prefetch 64" scripts/bench.sh throughput --jobs 20000
#   scripts/bench.sh connections --sockets 10000       (the server's PID is passed for you)
#   PROFILE=1 scripts/bench.sh throughput ...          (also prints CPU seconds per process)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh

cargo build --release --locked -q -p herald-server -p herald-worker -p herald-loadgen
names=(--queue herald-bench.jobs --reply-exchange herald-bench.replies --redis-prefix herald-bench:)
# Both URLs, or the server would run embedded (in-process queue and workers).
names+=(--amqp-url "amqp://guest:guest@127.0.0.1:5672/%2f" --redis-url "redis://127.0.0.1:6379")
port=${BENCH_PORT:-18480}
ulimit -n "$(ulimit -Hn)"
log=$(mktemp -d)
# shellcheck disable=SC2086
./target/release/herald-worker "${names[@]}" ${WORKER_ARGS:-} >"$log/worker.log" 2>&1 &
worker=$!
# shellcheck disable=SC2086
# One client on loopback opens many sockets and submits fast: the per-client limits are off here.
./target/release/herald-server "${names[@]}" --listen "127.0.0.1:$port" \
  --submit-rate 0 --max-sockets-per-client 0 ${SERVER_ARGS:-} \
  >"$log/server.log" 2>&1 &
server=$!
cpu_seconds() { # pid... → summed user+system CPU seconds
  local total=0 pid
  for pid in "$@"; do
    read -r -a f <"/proc/$pid/stat"
    total=$((total + f[13] + f[14]))
  done
  echo "scale=1; $total / $(getconf CLK_TCK)" | bc
}
services_pids() { pgrep -d ' ' -f "$1" || true; }
cleanup() {
  if [ -n "${PROFILE:-}" ] && [ -n "${rabbit_before:-}" ]; then
    echo "--- CPU seconds during the run, by process:" >&2
    echo "rabbitmq      $(echo "$(cpu_seconds $(services_pids beam.smp)) - $rabbit_before" | bc)" >&2
    echo "redis         $(echo "$(cpu_seconds $(services_pids redis-server)) - $redis_before" | bc)" >&2
    echo "herald-server $(cpu_seconds "$server")" >&2
    echo "herald-worker $(cpu_seconds "$worker")" >&2
  fi
  kill -TERM "$server" "$worker" 2>/dev/null || true
  wait "$server" "$worker" 2>/dev/null || true
  rabbitmqctl -q delete_queue herald-bench.jobs >/dev/null 2>&1 || true
  rabbitmqctl -q delete_queue herald-bench.jobs.dead >/dev/null 2>&1 || true
  redis-cli --scan --pattern 'herald-bench:*' | xargs -r -n 1000 redis-cli del >/dev/null
  echo "logs: $log" >&2
}
trap cleanup EXIT
for _ in $(seq 100); do grep -q "listening on" "$log/server.log" && break; sleep 0.1; done
grep -q "listening on" "$log/server.log" || { cat "$log/server.log" >&2; exit 1; }
mode=$1
shift
if [ -n "${PROFILE:-}" ]; then
  rabbit_before=$(cpu_seconds $(services_pids beam.smp))
  redis_before=$(cpu_seconds $(services_pids redis-server))
fi
extra=()
[ "$mode" = connections ] && extra=(--server-pid "$server")
./target/release/herald-loadgen --url "http://127.0.0.1:$port" "$mode" "${extra[@]}" "$@"
