#!/usr/bin/env bash
# End-to-end benchmark: starts a release server and worker on names of their own (so nothing else on
# the broker is touched), runs `herald-loadgen` with the given arguments against them, then stops both
# and deletes the queue and the Redis keys it used. The names and the port are this run's own
# (the queue herald-bench.<pid>.factorial, the Redis prefix herald-bench.<pid>:, a free port unless
# BENCH_PORT is set): two runs at once on the same RabbitMQ and Redis, from two shells or sessions,
# would otherwise take each other's jobs and delete each other's keys.
#   scripts/bench.sh latency --jobs 2000
#   WORKER_ARGS="--concurrency 2 --prefetch 64" scripts/bench.sh throughput --jobs 20000
#   scripts/bench.sh connections --sockets 10000       (the server's PID is passed for you)
#   PROFILE=1 scripts/bench.sh throughput ...          (also prints CPU seconds per process, read from
#                                                       /proc: the shipped release build, no symbols needed)
#   BUILD_PROFILE=profiling scripts/bench.sh ...       (binaries with line tables and symbols, for perf
#                                                       or flamegraphs attached to the running processes)
#   EMBEDDED=1 scripts/bench.sh cancel ...             (the server alone, embedded: its queue, store and
#                                                       workers in process; no RabbitMQ, Redis or worker;
#                                                       its jobs kept in a fresh data directory, removed
#                                                       after; SERVER_ARGS=--in-memory: in memory only)
#   MALACHITE=1 scripts/bench.sh cancel ...            (binaries built with the malachite backend)
#   SERVER_BIN=/tmp/herald-server-old scripts/bench.sh connections ...
#                                                     (another build's server, e.g. the previous
#                                                      commit's, against the same worker and load)
set -euo pipefail
cd "$(dirname "$0")/.."
embedded=${EMBEDDED:-}
[ -n "$embedded" ] || source scripts/services.sh

features=()
[ -z "${MALACHITE:-}" ] || features=(--features herald-worker/malachite)
profile=${BUILD_PROFILE:-release}
cargo build --profile "$profile" --locked -q -p herald-server -p herald-worker -p herald-loadgen "${features[@]}"
bin="${CARGO_TARGET_DIR:-./target}/$profile"
run=herald-bench.$$
ulimit -n "$(ulimit -Hn)"
log=$(mktemp -d)
if [ -n "$embedded" ]; then
  # A data directory of this run's own (the default, herald-data in the working directory, would carry
  # jobs from one run into the next), unless the server keeps its jobs in memory.
  backend=()
  case " ${SERVER_ARGS:-} " in
  *" --in-memory "*) ;;
  *) backend=(--data-dir "$log/data") ;;
  esac
  worker=
else
  # Both URLs, and to both processes: a server given neither runs embedded, and the worker sits idle.
  # The reply exchange may be shared: it routes each completion by its server's own instance ID.
  backend=(--queue "$run.{model}" --reply-exchange herald-bench.replies --redis-prefix "$run:"
    --amqp-url "${HERALD_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
    --redis-url "${HERALD_REDIS_URL:-redis://127.0.0.1:6379}")
  # WORKER_ARGS is split as a shell would (as scripts/run.sh does), so a --model command line keeps
  # its quotes: WORKER_ARGS='--model echo="python3 examples/python/echo.py"'.
  eval "worker_args=(${WORKER_ARGS:-})"
  "$bin/herald-worker" "${backend[@]}" "${worker_args[@]}" >"$log/worker.log" 2>&1 &
  worker=$!
fi
# shellcheck disable=SC2086
# One client on loopback opens many sockets and submits fast: the per-client limits are off here.
"${SERVER_BIN:-$bin/herald-server}" "${backend[@]}" --listen "127.0.0.1:${BENCH_PORT:-0}" \
  --submit-rate 0 --max-sockets-per-client 0 --max-queued-per-client 0 --max-jobs-per-client 0 \
  --max-stored-bytes-per-client 0 ${SERVER_ARGS:-} \
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
  # The report below may go to a pipe already closed (`| head`): stopping there would leave both
  # processes running.
  trap '' PIPE
  if [ -n "${PROFILE:-}" ] && [ -n "$embedded" ]; then
    echo "--- CPU seconds during the run, by process:" >&2
    echo "herald-server $(cpu_seconds "$server") (embedded: its queue, store and workers included)" >&2
  elif [ -n "${PROFILE:-}" ] && [ -n "${rabbit_before:-}" ]; then
    echo "--- CPU seconds during the run, by process:" >&2
    echo "rabbitmq      $(echo "$(cpu_seconds $(services_pids beam.smp)) - $rabbit_before" | bc)" >&2
    echo "redis         $(echo "$(cpu_seconds $(services_pids redis-server)) - $redis_before" | bc)" >&2
    echo "herald-server $(cpu_seconds "$server")" >&2
    echo "herald-worker $(cpu_seconds "$worker")" >&2
  fi
  # $worker is empty in embedded mode: left unquoted, it then names no process.
  # shellcheck disable=SC2086
  kill -TERM "$server" $worker 2>/dev/null || true
  # shellcheck disable=SC2086
  wait "$server" $worker 2>/dev/null || true
  if [ -z "$embedded" ]; then
    # One queue (and dead-letter queue) per model the run served.
    for queue in $(rabbitmqctl -q list_queues name 2>/dev/null | grep -F "$run." || true); do
      rabbitmqctl -q delete_queue "$queue" >/dev/null 2>&1 || true
    done
    redis-cli --scan --pattern "$run:*" | xargs -r -n 1000 redis-cli del >/dev/null
  fi
  rm -rf "$log/data"
  echo "logs: $log" >&2
}
trap cleanup EXIT
for _ in $(seq 100); do grep -q "listening on" "$log/server.log" && break; sleep 0.1; done
grep -q "listening on" "$log/server.log" || { cat "$log/server.log" >&2; exit 1; }
addr=$(grep -o -m 1 'listening on http://[0-9.]*:[0-9]*' "$log/server.log" | sed 's|.*http://||')
mode=$1
shift
# Another model than the factorial is served once its worker announced it: wait for that, or every
# job of the run would be refused as unknown_model.
args=("$@")
for i in "${!args[@]}"; do
  [ "${args[$i]}" = --model ] || continue
  want=${args[$((i + 1))]}
  for _ in $(seq 300); do
    curl -fs "http://$addr/models" | grep -q "\"name\":\"$want\"" && break
    sleep 0.1
  done
  curl -fs "http://$addr/models" | grep -q "\"name\":\"$want\"" ||
    { echo "no worker serves the model $want after 30 s; see $log" >&2; exit 1; }
done
if [ -n "${PROFILE:-}" ] && [ -z "$embedded" ]; then
  rabbit_before=$(cpu_seconds $(services_pids beam.smp))
  redis_before=$(cpu_seconds $(services_pids redis-server))
fi
extra=()
[ "$mode" = connections ] && extra=(--server-pid "$server")
"$bin/herald-loadgen" --url "http://$addr" "$mode" "${extra[@]}" "$@"
