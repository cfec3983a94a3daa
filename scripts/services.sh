#!/usr/bin/env bash
# Makes sure RabbitMQ and Redis answer on their default local ports: starts them if stopped, installs
# them from Debian's packages if missing. Sourced by test.sh and run.sh; safe to run again.
set -euo pipefail

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

source "$(dirname "${BASH_SOURCE[0]}")/apt.sh"

wait_port() { # name port seconds
  local i
  for ((i = 0; i < $3 * 10; i++)); do
    port_open "$2" && return 0
    sleep 0.1
  done
  echo "services.sh: $1 did not open port $2 within $3 s" >&2
  exit 1
}

ensure_redis() {
  port_open 6379 && return 0
  command -v redis-server >/dev/null || apt_install redis-server
  echo "services.sh: starting Redis" >&2
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  wait_port Redis 6379 30
}

ensure_rabbitmq() {
  if port_open 5672; then return 0; fi
  command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
  echo "services.sh: starting RabbitMQ" >&2
  rabbitmq-server -detached
  wait_port RabbitMQ 5672 120
  # The port opens a little before the broker accepts logins; wait for the app itself.
  rabbitmqctl await_startup >/dev/null 2>&1 || true
}

ensure_redis
ensure_rabbitmq
