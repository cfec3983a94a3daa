#!/usr/bin/env bash
# A real high-availability setup on loopback, from Debian's packages (installed if missing), for the
# cluster tests and for anyone who wants to try Herald's HA on one machine: three RabbitMQ nodes joined
# into one cluster, and a Redis primary with one replica watched by three Sentinels. Each has its own
# node name, ports and data directory under $HERALD_CLUSTER_DIR (default /tmp/herald-cluster); the
# machine's own RabbitMQ (5672, node rabbit@localhost) and Redis (6379) are never touched.
#
#   scripts/cluster.sh start             start everything; prints `export HERALD_…=…` lines on stdout
#   scripts/cluster.sh stop-rabbit N     stop RabbitMQ node N (1, 2, 3)
#   scripts/cluster.sh start-rabbit N    start it again (it rejoins the cluster)
#   scripts/cluster.sh kill-redis-primary  SIGKILL the Redis that Sentinel names primary; prints its port
#   scripts/cluster.sh start-redis       start again every Redis of the cluster that is down, as a
#                                        replica of the current primary
#   scripts/cluster.sh queue-leader Q    the number of the RabbitMQ node that leads quorum queue Q
#   scripts/cluster.sh primary           the port of the Redis that Sentinel names primary
#   scripts/cluster.sh env               print the `export` lines again
#   scripts/cluster.sh status            what runs
#   scripts/cluster.sh stop              stop everything it started and remove its data
#
#   eval "$(scripts/cluster.sh start)"   # then run herald-server / herald-worker as usual
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/apt.sh

DIR=${HERALD_CLUSTER_DIR:-/tmp/herald-cluster}
RABBIT_PORTS=(5681 5682 5683)        # AMQP; Erlang distribution on port + 20000
REDIS_PORTS=(6391 6392)              # the first starts as primary, the second as its replica
SENTINEL_PORTS=(26391 26392 26393)
MASTER_NAME=herald
# The sbin scripts themselves: Debian's wrappers in /usr/sbin switch to the rabbitmq user and its home.
RABBIT_SBIN=$(ls -d /usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin 2>/dev/null | sort -V | tail -n 1 || true)

log() { echo "cluster.sh: $*" >&2; }
die() { log "$*"; exit 1; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # what port seconds
  local i
  for ((i = 0; i < $3 * 10; i++)); do
    port_open "$2" && return 0
    sleep 0.1
  done
  die "$1 did not open port $2 within $3 s"
}

ensure_packages() {
  command -v redis-server >/dev/null || apt_install redis-server
  [ -n "$RABBIT_SBIN" ] || { apt_install rabbitmq-server; RABBIT_SBIN=$(ls -d /usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin | sort -V | tail -n 1); }
}

node_name() { echo "herald-c$1@localhost"; }

# Runs a RabbitMQ script for node N with that node's environment.
rabbit_env() { # N command...
  local n=$1 port=${RABBIT_PORTS[$1 - 1]}
  shift
  env HOME="$DIR/home" \
    RABBITMQ_NODENAME="$(node_name "$n")" \
    RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
    RABBITMQ_NODE_PORT="$port" \
    RABBITMQ_DIST_PORT=$((port + 20000)) \
    RABBITMQ_MNESIA_BASE="$DIR/rabbit$n/mnesia" \
    RABBITMQ_LOG_BASE="$DIR/rabbit$n/log" \
    RABBITMQ_PID_FILE="$DIR/rabbit$n/pid" \
    RABBITMQ_CONFIG_FILE="$DIR/rabbit$n/rabbitmq.conf" \
    RABBITMQ_ADVANCED_CONFIG_FILE="$DIR/rabbit$n/advanced.config" \
    RABBITMQ_CONF_ENV_FILE="$DIR/rabbitmq-env.conf" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$DIR/enabled_plugins" \
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
    ERL_EPMD_ADDRESS=127.0.0.1 \
    "$@"
}

ctl() { # N rabbitmqctl-args...
  local n=$1
  shift
  rabbit_env "$n" "$RABBIT_SBIN/rabbitmqctl" -n "$(node_name "$n")" "$@"
}

start_rabbit() { # N
  local n=$1
  port_open "${RABBIT_PORTS[$n - 1]}" && { log "RabbitMQ node $n already runs"; return 0; }
  mkdir -p "$DIR/rabbit$n/mnesia" "$DIR/rabbit$n/log"
  # setsid: the node outlives the shell that started it (and its process group).
  rabbit_env "$n" setsid "$RABBIT_SBIN/rabbitmq-server" >"$DIR/rabbit$n/stdout.log" 2>&1 </dev/null &
}

await_rabbit() { # N
  local n=$1
  wait_port "RabbitMQ node $n" "${RABBIT_PORTS[$n - 1]}" 180
  ctl "$n" await_startup --timeout 120 >/dev/null
}

stop_rabbit() { # N
  local n=$1
  if ctl "$n" shutdown >/dev/null 2>&1; then
    log "RabbitMQ node $n stopped"
  else
    log "RabbitMQ node $n was not running"
  fi
}

redis_pid() { cat "$DIR/$1/pid" 2>/dev/null || true; }

start_redis() { # index(1|2) [replicaof-port]
  local i=$1 port=${REDIS_PORTS[$1 - 1]} dir="$DIR/redis$1"
  mkdir -p "$dir"
  local args=(--port "$port" --bind 127.0.0.1 --dir "$dir" --daemonize yes
    --pidfile "$dir/pid" --logfile "$dir/redis.log" --appendonly yes --save "")
  [ -n "${2:-}" ] && args+=(--replicaof 127.0.0.1 "$2")
  redis-server "${args[@]}"
  wait_port "Redis $i" "$port" 30
}

start_sentinel() { # index
  local i=$1 port=${SENTINEL_PORTS[$1 - 1]} dir="$DIR/sentinel$1"
  mkdir -p "$dir"
  cat >"$dir/sentinel.conf" <<EOF
port $port
bind 127.0.0.1
dir $dir
daemonize yes
pidfile $dir/pid
logfile $dir/sentinel.log
sentinel monitor $MASTER_NAME 127.0.0.1 ${REDIS_PORTS[0]} 2
sentinel down-after-milliseconds $MASTER_NAME 1000
sentinel failover-timeout $MASTER_NAME 10000
sentinel parallel-syncs $MASTER_NAME 1
EOF
  redis-server "$dir/sentinel.conf" --sentinel
  wait_port "Sentinel $i" "$port" 30
}

primary_port() {
  local port
  for port in "${SENTINEL_PORTS[@]}"; do
    if answer=$(redis-cli -p "$port" --raw SENTINEL get-master-addr-by-name "$MASTER_NAME" 2>/dev/null) &&
      [ -n "$answer" ]; then
      echo "$answer" | sed -n 2p
      return 0
    fi
  done
  return 1
}

print_env() {
  local urls=() sentinels=() port
  for port in "${RABBIT_PORTS[@]}"; do urls+=("amqp://guest:guest@127.0.0.1:$port/%2f"); done
  for port in "${SENTINEL_PORTS[@]}"; do sentinels+=("127.0.0.1:$port"); done
  (IFS=,; echo "export HERALD_AMQP_URL=${urls[*]}")
  (IFS=,; echo "export HERALD_REDIS_SENTINEL=${sentinels[*]}")
  echo "export HERALD_REDIS_MASTER_NAME=$MASTER_NAME"
}

check_ports_free() {
  local port
  for port in "${RABBIT_PORTS[@]}" "${REDIS_PORTS[@]}" "${SENTINEL_PORTS[@]}"; do
    port_open "$port" && die "port $port is taken: is a cluster already running? ($0 stop)"
  done
  for port in "${RABBIT_PORTS[@]}"; do
    port_open $((port + 20000)) && die "port $((port + 20000)) is taken"
  done
  return 0
}

cmd_start() {
  ensure_packages
  check_ports_free
  rm -rf "$DIR"
  mkdir -p "$DIR/home"
  # One Erlang cookie for the three nodes and the CLI tools, apart from the machine's own.
  head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$DIR/home/.erlang.cookie"
  chmod 400 "$DIR/home/.erlang.cookie"
  echo '[].' >"$DIR/enabled_plugins" # no management or prometheus plugin: no extra ports
  : >"$DIR/rabbitmq-env.conf"
  local n
  for n in 1 2 3; do
    mkdir -p "$DIR/rabbit$n"
    printf 'cluster_partition_handling = pause_minority\n' >"$DIR/rabbit$n/rabbitmq.conf"
  done

  log "starting Redis ${REDIS_PORTS[0]} (primary), ${REDIS_PORTS[1]} (replica) and Sentinels ${SENTINEL_PORTS[*]}"
  start_redis 1
  start_redis 2 "${REDIS_PORTS[0]}"
  for n in 1 2 3; do start_sentinel "$n"; done

  log "starting RabbitMQ nodes $(node_name 1), $(node_name 2), $(node_name 3) on ${RABBIT_PORTS[*]}"
  for n in 1 2 3; do start_rabbit "$n"; done
  for n in 1 2 3; do await_rabbit "$n"; done
  for n in 2 3; do
    ctl "$n" stop_app >/dev/null
    ctl "$n" join_cluster "$(node_name 1)" >/dev/null
    ctl "$n" start_app >/dev/null
  done
  local running
  running=$(ctl 1 eval 'length(rabbit_nodes:all_running()).' 2>/dev/null || echo 0)
  [ "$running" = 3 ] || die "the RabbitMQ cluster has $running running nodes, not 3 (logs in $DIR/rabbit*/log)"

  # The replica must be in sync before anyone counts on it.
  local i
  for ((i = 0; i < 300; i++)); do
    redis-cli -p "${REDIS_PORTS[0]}" INFO replication | grep -q 'state=online' && break
    sleep 0.1
  done
  redis-cli -p "${REDIS_PORTS[0]}" INFO replication | grep -q 'state=online' || die "the Redis replica did not sync"
  log "cluster up (data in $DIR)"
  print_env
}

cmd_kill_redis_primary() {
  local port i
  port=$(primary_port) || die "no Sentinel names a primary"
  for i in 1 2; do
    if [ "${REDIS_PORTS[$i - 1]}" = "$port" ]; then
      local pid
      pid=$(redis_pid "redis$i")
      [ -n "$pid" ] || die "no pid file for Redis $port"
      kill -9 "$pid"
      log "Redis primary on $port (pid $pid) killed"
      echo "$port"
      return 0
    fi
  done
  die "the primary $port is not one of this cluster's Redis"
}

cmd_start_redis() {
  local i primary
  primary=$(primary_port) || die "no Sentinel names a primary"
  for i in 1 2; do
    if ! port_open "${REDIS_PORTS[$i - 1]}"; then
      if [ "${REDIS_PORTS[$i - 1]}" = "$primary" ]; then
        # Sentinel has not moved the primary away yet: start it as it was.
        start_redis "$i"
      else
        start_redis "$i" "$primary"
      fi
      log "Redis ${REDIS_PORTS[$i - 1]} started (primary: $primary)"
    fi
  done
}

cmd_queue_leader() { # queue
  local n leader
  for n in 1 2 3; do
    port_open "${RABBIT_PORTS[$n - 1]}" || continue
    leader=$(ctl "$n" -q list_queues --no-table-headers name leader 2>/dev/null | awk -F '\t' -v q="$1" '$1 == q { print $2 }')
    if [[ "$leader" =~ ^herald-c([123])@ ]]; then
      echo "${BASH_REMATCH[1]}"
      return 0
    fi
  done
  die "no running node names a leader of queue $1"
}

cmd_status() {
  local n port
  for n in 1 2 3; do
    port=${RABBIT_PORTS[$n - 1]}
    port_open "$port" && echo "rabbitmq $(node_name "$n") :$port up" || echo "rabbitmq $(node_name "$n") :$port down"
  done
  for port in "${REDIS_PORTS[@]}"; do
    if port_open "$port"; then
      echo "redis :$port $(redis-cli -p "$port" --raw ROLE 2>/dev/null | head -n 1)"
    else
      echo "redis :$port down"
    fi
  done
  for port in "${SENTINEL_PORTS[@]}"; do
    port_open "$port" && echo "sentinel :$port up" || echo "sentinel :$port down"
  done
  primary_port >/dev/null && echo "primary: $(primary_port)" || true
}

cmd_stop() {
  local n pid
  [ -d "$DIR" ] || { log "nothing to stop"; return 0; }
  for n in 3 2 1; do
    if [ -n "$RABBIT_SBIN" ] && [ -f "$DIR/home/.erlang.cookie" ]; then
      ctl "$n" shutdown >/dev/null 2>&1 || true
    fi
    # A node that did not answer its CLI: its own pid file names it.
    pid=$(cat "$DIR/rabbit$n/pid" 2>/dev/null || true)
    [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true
  done
  for n in sentinel1 sentinel2 sentinel3 redis1 redis2; do
    pid=$(redis_pid "$n")
    [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true
  done
  rm -rf "$DIR"
  log "stopped; data removed"
}

case "${1:-}" in
  start) cmd_start ;;
  stop-rabbit) [[ "${2:-}" =~ ^[123]$ ]] || die "usage: $0 stop-rabbit 1|2|3"; stop_rabbit "$2" ;;
  start-rabbit) [[ "${2:-}" =~ ^[123]$ ]] || die "usage: $0 start-rabbit 1|2|3"; start_rabbit "$2"; await_rabbit "$2"; log "RabbitMQ node $2 up" ;;
  kill-redis-primary) cmd_kill_redis_primary ;;
  start-redis) cmd_start_redis ;;
  primary) primary_port || die "no Sentinel names a primary" ;;
  queue-leader) [ -n "${2:-}" ] || die "usage: $0 queue-leader QUEUE"; cmd_queue_leader "$2" ;;
  env) print_env ;;
  status) cmd_status ;;
  stop) cmd_stop ;;
  *) die "usage: $0 start|stop-rabbit N|start-rabbit N|kill-redis-primary|start-redis|queue-leader Q|env|status|stop" ;;
esac
